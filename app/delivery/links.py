"""Download links this service signs, like a Cloud Storage signed URL: the token is the grant.

A token is ``<payload>.<signature>``, both unpadded base64url. The payload packs a format
byte, the expiry (Unix seconds, 8 bytes big-endian), the file's SHA-256 (32 bytes) and the
blob key (UTF-8); the signature is HMAC-SHA256 over a context string and the payload. Nothing
is stored per link, so any replica holding the key can check any link.

The key comes from ``EDGE_AUTOML_DOWNLOAD_SIGNING_KEY``, or else is made once at random and
kept in the blob store at :data:`SIGNING_KEY_BLOB`, written only if absent so that replicas
starting together all end up with the first one written. Whoever can read the blob store can
then forge links, but such a reader already has every file a link could name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import struct
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr

from app.errors import PermissionDenied
from app.kit.blobs import BlobNotFound, BlobStore
from app.kit.blobs.base import key_problem

log = logging.getLogger(__name__)

SIGNING_KEY_BLOB = "secrets/download-signing-key"
SIGNING_KEY_BYTES = 32
_FORMAT = 1
_HEADER = struct.Struct(">BQ32s")  # format, expiry, sha256
_CONTEXT = b"edge-automl download link\0"


@dataclass(frozen=True)
class LinkClaims:
    """What a link grants: one blob, whose SHA-256 is known, until a time."""

    blob_key: str
    sha256: str  # lowercase hex
    expires_at: datetime  # UTC, whole seconds


class LinkSigner:
    """Signs and checks download tokens with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < SIGNING_KEY_BYTES:
            raise ValueError(f"a download signing key needs at least {SIGNING_KEY_BYTES} bytes")
        self._key = key

    def sign(self, claims: LinkClaims) -> str:
        """The token for ``claims``."""
        payload = (
            _HEADER.pack(_FORMAT, int(claims.expires_at.timestamp()), bytes.fromhex(claims.sha256))
            + claims.blob_key.encode()
        )
        return f"{_b64encode(payload)}.{_b64encode(self._mac(payload))}"

    def verify(self, token: str, *, now: datetime) -> LinkClaims:
        """The claims of a genuine, unexpired token; PermissionDenied otherwise."""
        claims = self._claims(token)
        if claims is None:
            log.info("delivery.link.rejected", extra={"reason": "invalid"})
            raise PermissionDenied("the download link is not valid")
        if now >= claims.expires_at:
            log.info("delivery.link.rejected", extra={"reason": "expired"})
            raise PermissionDenied(
                f"the download link expired at {rfc3339(claims.expires_at)}; "
                "call :download again for a new one"
            )
        return claims

    def _claims(self, token: str) -> LinkClaims | None:
        encoded_payload, dot, encoded_mac = token.partition(".")
        payload, mac = _b64decode(encoded_payload), _b64decode(encoded_mac)
        if not dot or payload is None or mac is None:
            return None
        # The signature is checked before anything in the payload is believed.
        if not hmac.compare_digest(mac, self._mac(payload)) or len(payload) <= _HEADER.size:
            return None
        form, expiry, digest = _HEADER.unpack_from(payload)
        try:
            blob_key = payload[_HEADER.size :].decode()
        except UnicodeDecodeError:
            return None
        if form != _FORMAT or key_problem(blob_key) is not None:
            return None
        try:
            expires_at = datetime.fromtimestamp(expiry, UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return LinkClaims(blob_key=blob_key, sha256=digest.hex(), expires_at=expires_at)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _CONTEXT + payload, hashlib.sha256).digest()


class SignerSource:
    """The signer of one app, made on first use (only a local blob store needs one)."""

    def __init__(self, blobs: BlobStore, configured: SecretStr | None) -> None:
        self._blobs = blobs
        self._configured = configured
        self._signer: LinkSigner | None = None
        self._lock = threading.Lock()

    def get(self) -> LinkSigner:
        if self._signer is None:
            with self._lock:
                if self._signer is None:
                    self._signer = LinkSigner(signing_key(self._blobs, self._configured))
        return self._signer


def signing_key(blobs: BlobStore, configured: SecretStr | None) -> bytes:
    """The configured key, or the one kept in the blob store (made there if none is yet)."""
    if configured is not None:
        return configured.get_secret_value().encode()
    try:
        return _checked(blobs.get(SIGNING_KEY_BLOB))
    except BlobNotFound:
        pass
    if blobs.put_if_absent(SIGNING_KEY_BLOB, secrets.token_bytes(SIGNING_KEY_BYTES)):
        log.info("delivery.signing_key.created", extra={"blob_key": SIGNING_KEY_BLOB})
    # Ours, or the key another replica stored first: read back either way.
    return _checked(blobs.get(SIGNING_KEY_BLOB))


def _checked(key: bytes) -> bytes:
    if len(key) < SIGNING_KEY_BYTES:
        raise RuntimeError(
            f"the blob {SIGNING_KEY_BLOB!r} holds {len(key)} bytes, not a signing key of "
            f"{SIGNING_KEY_BYTES}; delete it to have a new one made (open links stop working)"
        )
    return key


def rfc3339(moment: datetime) -> str:
    """UTC with milliseconds and ``Z``: the one form Firebase's Android downloader parses."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes | None:
    """The bytes of canonical unpadded base64url only: the decoder would otherwise skip
    stray characters and ignore the spare bits of the last one, so that several spellings
    of a token would be accepted."""
    if not text or not text.isascii():
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None

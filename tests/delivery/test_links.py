"""Signed download links: tokens, their checks, and the signing key the replicas share."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.delivery.links import (
    SIGNING_KEY_BLOB,
    LinkClaims,
    LinkSigner,
    SignerSource,
    rfc3339,
    signing_key,
)
from app.errors import PermissionDenied
from app.kit.blobs import LocalBlobStore, open_blob_store

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CLAIMS = LinkClaims(
    blob_key="models/m1/versions/3/model.tflite",
    sha256="ab" * 32,
    expires_at=NOW + timedelta(hours=1),
)


def signer(key: bytes = b"k" * 32) -> LinkSigner:
    return LinkSigner(key)


def test_a_token_is_url_safe_and_gives_back_its_claims():
    token = signer().sign(CLAIMS)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", token)
    assert len(token) < 200
    assert signer().verify(token, now=NOW) == CLAIMS


def test_every_one_character_change_is_refused():
    token = signer().sign(CLAIMS)
    for position, char in enumerate(token):
        for other in ("A", "Q", "g", "_"):  # other letters, other spare bits
            if other == char or char == ".":
                continue
            changed = token[:position] + other + token[position + 1 :]
            with pytest.raises(PermissionDenied, match="not valid"):
                signer().verify(changed, now=NOW)


@pytest.mark.parametrize(
    "token", ["", ".", "abc", "abc.", ".abc", "a.b.c", "é.é", "AAAA.AAAA", "AAAA=.AAAA"]
)
def test_malformed_tokens_are_refused(token):
    with pytest.raises(PermissionDenied, match="not valid"):
        signer().verify(token, now=NOW)


def test_another_key_is_refused():
    token = signer(b"a" * 32).sign(CLAIMS)
    with pytest.raises(PermissionDenied, match="not valid"):
        signer(b"b" * 32).verify(token, now=NOW)


def test_an_expired_token_says_so():
    token = signer().sign(CLAIMS)
    assert signer().verify(token, now=CLAIMS.expires_at - timedelta(seconds=1)) == CLAIMS
    with pytest.raises(PermissionDenied, match=r"expired at 2026-03-01T13:00:00.000Z"):
        signer().verify(token, now=CLAIMS.expires_at)


def test_short_keys_are_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        LinkSigner(b"short")


def test_a_key_is_made_once_and_kept(tmp_path: Path):
    blobs = open_blob_store(tmp_path.as_uri())
    first = signing_key(blobs, None)
    assert len(first) == 32
    assert blobs.get(SIGNING_KEY_BLOB) == first
    assert signing_key(open_blob_store(tmp_path.as_uri()), None) == first


def test_replicas_starting_together_end_with_one_key(tmp_path: Path):
    # Each "replica" opens its own store on the shared folder and races to make the key.
    tokens: list[str] = []
    barrier = threading.Barrier(8)

    def replica() -> None:
        store = LocalBlobStore(tmp_path)
        barrier.wait()
        tokens.append(SignerSource(store, None).get().sign(CLAIMS))

    threads = [threading.Thread(target=replica) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == 8 and len(set(tokens)) == 1
    stored = LinkSigner(LocalBlobStore(tmp_path).get(SIGNING_KEY_BLOB))
    assert stored.sign(CLAIMS) == tokens[0]


def test_a_configured_key_is_used_and_nothing_is_stored(tmp_path: Path):
    blobs = open_blob_store(tmp_path.as_uri())
    assert signing_key(blobs, SecretStr("c" * 40)) == b"c" * 40
    assert not blobs.exists(SIGNING_KEY_BLOB)


def test_a_damaged_stored_key_is_reported(tmp_path: Path):
    blobs = open_blob_store(tmp_path.as_uri())
    blobs.put(SIGNING_KEY_BLOB, b"short")
    with pytest.raises(RuntimeError, match="delete it"):
        signing_key(blobs, None)


def test_times_have_milliseconds_and_z():
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"

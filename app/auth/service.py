"""API key rules: keys are random, shown once, stored hashed; scopes nest read < write < admin."""

from __future__ import annotations

import enum
import hashlib
import logging
import secrets
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.auth import repository
from app.db.api_key import ApiKey
from app.errors import InvalidInput, NotFound
from app.kit.clock import utcnow
from app.kit.ids import new_id

log = logging.getLogger(__name__)

KEY_PREFIX = "eak_"
# Writing last_used_at on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


_RANK = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}


def grants(scopes: Sequence[str], needed: Scope) -> bool:
    """Whether a key with ``scopes`` may make a call that needs ``needed``."""
    return any(_RANK.get(Scope(s), -1) >= _RANK[needed] for s in scopes if s in _RANK)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(session: Session, *, display_name: str, scopes: Sequence[str]) -> tuple[ApiKey, str]:
    """Make a key; returns the row and the secret, which is never retrievable again."""
    if not display_name.strip():
        raise InvalidInput.field("name", "must not be empty")
    unknown = sorted(set(scopes) - {s.value for s in Scope})
    if unknown or not scopes:
        raise InvalidInput.field(
            "scope", f"must be among read, write, admin (got {unknown or 'none'})"
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id(),
        display_name=display_name.strip(),
        key_hash=hash_key(secret),
        key_prefix=secret[: len(KEY_PREFIX) + 6],
        scopes=sorted(set(scopes), key=lambda s: _RANK[Scope(s)]),
        created_at=utcnow(),
    )
    return repository.add(session, key), secret


def revoke(session: Session, *, key_id: str) -> ApiKey:
    key = repository.get(session, key_id)
    if key is None:
        raise NotFound(f"API key {key_id!r} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def authenticate(session: Session, *, secret: str) -> ApiKey | None:
    """The active key matching ``secret``, or None."""
    key = repository.by_hash(session, hash_key(secret))
    if key is None or key.revoked_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        try:
            # Best effort: in a read session (GET) on SQLite the write can find the database
            # changed since the read began; the request must not fail for a timestamp.
            with session.begin_nested():
                key.last_used_at = now
                session.flush()
        except OperationalError:
            log.info("auth.last_used.skipped", extra={"key_id": key.id})
    return key


def auth_required(session: Session, *, mode: str) -> bool:
    """on: always; off: never; auto: as soon as one active key exists."""
    if mode == "auto":
        return repository.any_active(session)
    return mode == "on"

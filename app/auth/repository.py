"""Every query on ``api_keys``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.api_key import ApiKey


def add(session: Session, key: ApiKey) -> ApiKey:
    session.add(key)
    session.flush()
    return key


def get(session: Session, key_id: str) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def by_hash(session: Session, key_hash: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).one_or_none()


def list_all(session: Session) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()


def any_active(session: Session) -> bool:
    query = select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)
    return session.execute(query).first() is not None

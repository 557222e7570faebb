"""Every query on deployments."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.db.deployment import Deployment


def get(session: Session, model_id: str) -> Deployment | None:
    return session.get(Deployment, model_id)


def put(session: Session, row: Deployment) -> Deployment:
    merged = session.merge(row)
    session.flush()
    return merged


def remove(session: Session, model_id: str) -> None:
    session.execute(delete(Deployment).where(Deployment.model_id == model_id))

"""Every query on evaluations."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.evaluation import Evaluation
from app.kit.pagination import PageCursor, newest_first


def add(session: Session, row: Evaluation) -> Evaluation:
    session.add(row)
    session.flush()
    return row


def list_page(
    session: Session, *, model_id: str, limit: int, after: PageCursor | None
) -> Sequence[Evaluation]:
    query = newest_first(
        select(Evaluation).where(Evaluation.model_id == model_id),
        time=Evaluation.created_at,
        id=Evaluation.id,
        after=after,
        limit=limit,
    )
    return session.scalars(query).all()


def get(session: Session, *, model_id: str, evaluation_id: str) -> Evaluation | None:
    return session.scalars(
        select(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.model_id == model_id)
    ).one_or_none()

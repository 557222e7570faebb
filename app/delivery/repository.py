"""Every query of the delivery domain."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.model import Model
from app.db.model_artifact import ModelArtifact

TFLITE = "tflite"


def published_named(session: Session, display_name: str) -> Sequence[Model]:
    """Models with this display name and a published split, most recently published first."""
    return session.scalars(
        select(Model)
        .where(Model.display_name == display_name, Model.published_split.is_not(None))
        # NULLS LAST spelled out: PostgreSQL sorts NULLs first in a descending order.
        .order_by(Model.published_at.desc().nulls_last(), Model.created_at.desc(), Model.id)
    ).all()


def tflite_artifact(session: Session, model_id: str, version: int) -> ModelArtifact | None:
    """The TFLite file of one model version, the file apps download."""
    return session.scalars(
        select(ModelArtifact).where(
            ModelArtifact.model_id == model_id,
            ModelArtifact.model_version == version,
            ModelArtifact.format == TFLITE,
        )
    ).one_or_none()

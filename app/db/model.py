"""The ``models`` table: a trained detector in the registry, with numbered versions.

The files themselves are ``model_versions``; tags are ``model_tags`` (so filters stay SQL).

``revision`` counts changes to what a client can see (display name, tags, publishing); the
``etag`` is made from it, so ``If-Match`` detects a stale read. ``published_split`` is
``None`` while unpublished, else the published versions and their weights
(``{"3": 100}``, or ``{"3": 80, "4": 20}`` for an A/B split).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (
        Index("ix_models_created", "created_at", "id"),
        Index("ix_models_display_name", "display_name"),
    )

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    labels: Mapped[list[str]] = mapped_column(JSON)
    model_type: Mapped[str] = mapped_column(String(40))
    input_size: Mapped[int] = mapped_column(Integer)
    # The training job that made it (a plain id: the job's history outlives nothing here).
    training_job_id: Mapped[str | None] = mapped_column(String(60), index=True)
    # "training" (a training job here) or "upload" (a .tflite file brought by the user).
    source: Mapped[str] = mapped_column(String(16), default="training")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # none_as_null: Python None is SQL NULL (not JSON null), so "IS NULL" means unpublished.
    published_split: Mapped[dict[str, int] | None] = mapped_column(JSON(none_as_null=True))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # google.rpc.Status-like {code, message} when an uploaded file failed validation.
    validation_error: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # Where the Firebase ML mirror stands: {name, published, modelHash, error, updateTime}.
    firebase_mirror: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # Optimistic locking: every UPDATE checks and bumps the revision, so two writers that read
    # the same state cannot both win (SQLAlchemy raises StaleDataError for the loser).
    __mapper_args__ = {"version_id_col": revision}  # noqa: RUF012 - SQLAlchemy reads it


class ModelTag(Base):
    """One tag of a model; a row per tag so ``tags: a AND tags: b`` is two EXISTS."""

    __tablename__ = "model_tags"
    __table_args__ = (Index("ix_model_tags_tag", "tag", "model_id"),)

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(60), primary_key=True)

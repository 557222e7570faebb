"""The ``models`` table: a trained detector in the registry, with numbered versions.

Issue 7 extends it (tags, publishing, etag); the files themselves are ``model_versions``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_created", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    labels: Mapped[list[str]] = mapped_column(JSON)
    model_type: Mapped[str] = mapped_column(String(40))
    input_size: Mapped[int] = mapped_column(Integer)
    # The training job that made it (a plain id: the job's history outlives nothing here).
    training_job_id: Mapped[str | None] = mapped_column(String(60), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

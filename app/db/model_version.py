"""The ``model_versions`` table: one immutable model file of a model, numbered from 1."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    training_job_id: Mapped[str | None] = mapped_column(String(60))
    # The version's own file: "pytorch" (app.detector.bundle, as trained here) or "tflite"
    # (uploaded; it is also the version's tflite artifact).
    format: Mapped[str] = mapped_column(String(16), default="pytorch")
    weights_blob_key: Mapped[str] = mapped_column(String(200))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    weights_size_bytes: Mapped[int] = mapped_column(Integer)
    # The Vertex AI model this version came from (projects/P/locations/L/models/ID), when
    # Vertex trained it: a later AutoML job can start from it (uptrainBaseModelId).
    remote_model_name: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

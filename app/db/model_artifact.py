"""The ``model_artifacts`` table: a model version exported to another format (ONNX, TFLite).

Made once per version and format, deterministically, and never changed: its SHA-256 is the
ETag clients cache it by.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class ModelArtifact(Base):
    __tablename__ = "model_artifacts"
    __table_args__ = (UniqueConstraint("model_id", "model_version", "format"),)

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_version: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    blob_key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    # How to run it: opset, input shape and scaling, outputs, labels.
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

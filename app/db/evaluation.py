"""The ``evaluations`` table: one model version scored on one split of a dataset.

The full Vertex-shaped metrics (every IoU and confidence threshold, per label) grow with the
labels, so they live in the blob store (``metrics_blob_key``); the row keeps the summary
figures that lists show and sort by.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_model", "model_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_version: Mapped[int] = mapped_column(Integer)
    # A plain id: the evaluation stays readable after its dataset is deleted.
    dataset_id: Mapped[str] = mapped_column(String(60))
    split: Mapped[str] = mapped_column(String(16))
    # Which file was scored: "pytorch" now; "onnx", "tflite" once export exists.
    artifact_format: Mapped[str] = mapped_column(String(16))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    metrics_blob_key: Mapped[str] = mapped_column(String(200))
    # Vertex's boundingBoxMeanAveragePrecision (mean over its IoU thresholds).
    bounding_box_mean_average_precision: Mapped[float | None] = mapped_column(Float)
    # COCO's AP@0.5 and AP@[.5:.95]; NULL where COCO calls them undefined (no ground truth).
    ap50: Mapped[float | None] = mapped_column(Float)
    ap50_95: Mapped[float | None] = mapped_column(Float)
    evaluated_bounding_box_count: Mapped[int] = mapped_column(Integer)
    image_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

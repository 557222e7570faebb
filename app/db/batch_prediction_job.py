"""The ``batch_prediction_jobs`` table: a model version's ONNX file run over a frozen list of
images, its results written to the blob store in numbered chunks.

As with training jobs, state and error are the queue job's (``job_id``). The list of
instances is frozen in the blob store when the job is created (``instances_blob_key``), and
``chunk_size`` is fixed then too, so every attempt cuts the list at the same places:
``chunks_done`` counts the output files finished and recorded, in the same statement as the
counts of their results, and a resumed attempt starts after them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class BatchPredictionJob(Base):
    __tablename__ = "batch_prediction_jobs"
    __table_args__ = (
        Index("ix_batch_prediction_jobs_created", "created_at", "id"),
        Index("ix_batch_prediction_jobs_model", "model_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    # A plain id, as on training jobs: the job's history outlives what it ran.
    model_id: Mapped[str] = mapped_column(String(60))
    model_version: Mapped[int] = mapped_column(Integer)
    # The ONNX file the job runs, resolved when it was created.
    artifact_blob_key: Mapped[str] = mapped_column(String(200))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    # The input as the API shows it (camelCase): gcsSource, datasetSource or fileUpload.
    input_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    instances_blob_key: Mapped[str] = mapped_column(String(200))
    instance_count: Mapped[int] = mapped_column(Integer)
    confidence_threshold: Mapped[float] = mapped_column(Float)
    max_predictions: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    successful_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

"""The ``training_jobs`` table: a request to train a detector on a frozen dataset snapshot.

The job's state and error are not stored here: they are the queue job's (``job_id``), the
one row the worker moves through QUEUED, RUNNING, CANCELLING and the terminal states, so
the two can never disagree. ``dataset_id`` and ``base_model_id`` are plain ids, not
foreign keys: the snapshot makes a job self-contained, and deleting its dataset (or, later,
its base model) must leave the job's history readable.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Backend(enum.StrEnum):
    LOCAL = "local"
    VERTEX_AUTOML = "vertex-automl"
    VERTEX_CUSTOM = "vertex-custom"


class Phase(enum.StrEnum):
    SUBMITTING = "SUBMITTING"
    REMOTE = "REMOTE"
    COLLECTING = "COLLECTING"


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (
        Index("ix_training_jobs_created", "created_at", "id"),
        Index("ix_training_jobs_dataset", "dataset_id", "created_at"),
        Index("ix_training_jobs_poll", "phase", "next_poll_at"),
    )

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(String(60))
    model_type: Mapped[str] = mapped_column(String(40))
    budget_milli_node_hours: Mapped[int] = mapped_column(Integer)
    disable_early_stopping: Mapped[bool] = mapped_column(Boolean, default=False)
    base_model_id: Mapped[str | None] = mapped_column(String(60))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    # The images, boxes, splits and labels frozen when the job was created (JSON blob).
    snapshot_blob_key: Mapped[str] = mapped_column(String(200))
    # Label names; a box's class index is its label's position here.
    labels: Mapped[list[str]] = mapped_column(JSON)
    train_image_count: Mapped[int] = mapped_column(Integer)
    validation_image_count: Mapped[int] = mapped_column(Integer)
    test_image_count: Mapped[int] = mapped_column(Integer)
    # The latest progress as the API shows it (camelCase), written every few seconds.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cost_milli_node_hours: Mapped[int | None] = mapped_column(Integer)
    successful_stop_reason: Mapped[str | None] = mapped_column(String(32))
    model_id: Mapped[str | None] = mapped_column(String(60))
    # Where the training runs: "local" (a worker here), "vertex-automl" or "vertex-custom".
    backend: Mapped[str] = mapped_column(String(20), default="local")
    # The remote backend's resource names, each written as soon as it exists, so that a
    # retried step reuses it instead of making a second one ({"pipelineName": ...}).
    remote: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # The last remote state seen (PIPELINE_STATE_RUNNING, JOB_STATE_SUCCEEDED, ...).
    remote_state: Mapped[str | None] = mapped_column(String(60))
    # Remote backends only: SUBMITTING (a worker creates the remote resources), REMOTE (the
    # poller watches them; no worker holds the job), COLLECTING (a worker registers the model).
    phase: Mapped[str | None] = mapped_column(String(20))
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Transient poll errors in a row (reset by a good poll); they space the polls out.
    poll_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_poll_error: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

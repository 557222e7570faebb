"""The ``jobs`` table: every piece of background work is one durable row."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
_STATE_LIST = ", ".join(f"'{s.value}'" for s in JobState)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATE_LIST})", name="state_known"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_fraction"),
        Index("ix_jobs_claim", "state", "run_after", "created_at"),
        Index("ix_jobs_state_heartbeat", "state", "heartbeat_at"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_resource", "resource_name", "state"),
    )

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    kind: Mapped[str] = mapped_column(String(100))
    # Ids and small options only: a task loads fresh state from the database when it runs.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The resource the job changes ("models/ID"): its unfinished jobs lock it.
    resource_name: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The error of the latest failed attempt, kept while retries remain.
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The final outcome, as an operation reports it: error (google.rpc.Status) or response.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Periodic jobs carry one key per schedule slot, so several workers enqueue it once.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

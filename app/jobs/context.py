"""What a task sees while it runs: its payload, a session, progress reports, checkpoints."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.kit.blobs import BlobStore


class JobInterrupted(Exception):
    """Raised at a checkpoint when the job must stop early; the worker handles each kind."""


class JobCancelled(JobInterrupted):
    """Someone cancelled the operation; the job ends CANCELLED."""


class WorkerStopping(JobInterrupted):
    """The worker is shutting down; the job goes back to the queue untouched."""


class LeaseLost(JobInterrupted):
    """Another worker reclaimed this job; this run must stop and write nothing."""


class HandedOff(Exception):
    """Raised by a task that started remote work: the worker commits the task's session and
    hands the job to the remote lease (``repository.REMOTE_LEASE``), still RUNNING, without
    a heartbeat. A poller then advances it, and may hand it back to the queue."""


@dataclass
class JobContext:
    """Handed to every task. The worker owns the transaction; a task never commits.

    ``session`` is committed together with the job's SUCCEEDED state, so a task's final
    writes and its completion land atomically. Long tasks should do their slow work
    outside it and use ``transaction()`` for intermediate writes (checkpoints), because an
    open transaction holds SQLite's write lock.
    """

    job_id: str
    kind: str
    # The lease holder: a task guards its own durable writes with it (jobs.repository.lease_held).
    worker_id: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    settings: Settings
    session: Session
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    _report: Callable[[float, dict[str, Any] | None], None]
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)

    @property
    def last_attempt(self) -> bool:
        """Whether a crash now fails the job for good (so the task should clean up)."""
        return self.attempt >= self.max_attempts

    def checkpoint(self) -> None:
        """Stop here if the job was cancelled, reclaimed, or the worker is stopping."""
        if self.lease_lost.is_set():
            raise LeaseLost(self.job_id)
        if self.cancel_requested.is_set():
            raise JobCancelled(self.job_id)
        if self.stop_requested.is_set():
            raise WorkerStopping(self.job_id)

    def report_progress(self, fraction: float, **details: Any) -> None:
        """Store progress (0 to 1, free-form details) now, visible to callers; then checkpoint."""
        self._report(min(1.0, max(0.0, fraction)), details or None)
        self.checkpoint()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A short transaction committed on exit, for writes that must survive this run."""
        with self.session_factory.begin() as session:
            yield session

"""Rules for jobs: enqueue in the caller's transaction, cancel, read as operations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.db.job import Job, JobState
from app.errors import FailedPrecondition, InvalidInput, NotFound
from app.jobs import repository
from app.jobs.registry import PeriodicJob
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor

# A payload names rows by id; anything bigger is data that belongs in the database.
MAX_PAYLOAD_BYTES = 8 * 1024
DEFAULT_MAX_ATTEMPTS = 3
CANCELLED_STATUS = {"code": 1, "status": "CANCELLED", "message": "cancelled by request"}


def enqueue(
    session: Session,
    *,
    kind: str,
    payload: dict[str, Any] | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    run_after: datetime | None = None,
    description: str | None = None,
    resource_name: str | None = None,
) -> Job:
    """Add a job to the queue inside the caller's transaction: it exists iff the caller commits.

    ``resource_name`` ("models/ID") names what the job changes: while it is unfinished the
    resource lists it among its active operations."""
    payload = payload or {}
    if len(json.dumps(payload)) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"job payload over {MAX_PAYLOAD_BYTES} bytes: pass ids, not data")
    now = utcnow()
    job = Job(
        id=new_id(),
        kind=kind,
        payload=payload,
        resource_name=resource_name,
        state=JobState.QUEUED,
        attempts=0,
        max_attempts=max_attempts,
        run_after=run_after or now,
        progress=0.0,
        progress_details={},
        description=description,
        created_at=now,
        updated_at=now,
    )
    repository.add(session, job)
    repository.notify_new_job(session)
    return job


def enqueue_periodic(
    session: Session, *, periodic: PeriodicJob, max_attempts: int, every: timedelta | None = None
) -> bool:
    """Enqueue this slot's run of a periodic job once, however many workers ask (``every``:
    its interval under the worker's settings, when it depends on them)."""
    prefix = f"periodic:{periodic.name}:"
    if repository.has_active(session, kind=periodic.kind, dedupe_prefix=prefix):
        return False
    if periodic.when is not None and not periodic.when(session):
        return False
    if every is None:
        assert isinstance(periodic.every, timedelta), "pass every= for a settings interval"
        every = periodic.every
    now = utcnow()
    slot = int(now.timestamp() // every.total_seconds())
    inserted = repository.insert_unless_duplicate(
        session,
        {
            "id": new_id(),
            "kind": periodic.kind,
            "payload": periodic.payload,
            "state": JobState.QUEUED.value,
            "attempts": 0,
            "max_attempts": max_attempts,
            "run_after": now,
            "progress": 0.0,
            "progress_details": {},
            "dedupe_key": f"{prefix}{slot}",
            "description": f"periodic {periodic.name}",
            "created_at": now,
            "updated_at": now,
        },
    )
    if inserted:
        repository.notify_new_job(session)
    return inserted


def get(session: Session, *, job_id: str) -> Job:
    job = repository.get(session, job_id) if is_valid_id(job_id) else None
    if job is None:
        raise NotFound(f"operation {job_id!r} not found")
    return job


def list_jobs(
    session: Session, *, page_size: int, after: PageCursor | None, states: Sequence[str]
) -> tuple[Sequence[Job], PageCursor | None]:
    unknown = sorted(set(states) - {s.value for s in JobState})
    if unknown:
        raise InvalidInput.field("state", f"unknown state {unknown[0]!r}")
    rows = repository.list_page(session, limit=page_size + 1, after=after, states=states)
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], PageCursor(time=last.created_at, id=last.id)


def cancel(session: Session, *, job_id: str) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next checkpoint.

    Cancelling twice is harmless; cancelling a finished job is a FAILED_PRECONDITION, as
    in Vertex AI.
    """
    for _ in range(3):  # the state may move under us; each step is a compare-and-set
        job = get(session, job_id=job_id)
        state = JobState(job.state)
        if state in (JobState.CANCELLING, JobState.CANCELLED):
            return job
        if state.is_terminal:
            raise FailedPrecondition(f"operation {job_id!r} already finished as {state.value}")
        if state == JobState.QUEUED:
            values: dict[str, Any] = {
                "state": JobState.CANCELLED,
                "error": CANCELLED_STATUS,
                "finished_at": utcnow(),
            }
        else:
            values = {"state": JobState.CANCELLING}
        if repository.transition(session, job_id=job_id, from_state=state, values=values):
            return get(session, job_id=job_id)
    raise FailedPrecondition(f"operation {job_id!r} is changing state; try again")

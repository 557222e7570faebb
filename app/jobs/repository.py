"""Every query on the ``jobs`` table: enqueue, claim, heartbeat, finish, reclaim, list.

State changes made by a worker are guarded by its lease (``lease_owner``): when a stalled
job was reclaimed and handed to another worker, the first worker's late writes match no row
and are dropped, so a job's outcome is recorded exactly once.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import ColumnElement, and_, case, exists, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from app.db.job import TERMINAL_STATES, Job, JobState
from app.kit.clock import utcnow
from app.kit.pagination import PageCursor, newest_first


class _RunAsJob(Protocol):
    """A resource whose work is a job: its row holds the job's id."""

    id: Any
    job_id: Any


RowT = TypeVar("RowT", bound=_RunAsJob)


def get_with_job(session: Session, table: type[RowT], row_id: str) -> tuple[RowT, Job] | None:
    """A resource's row and its job's row, read fresh (workers update both)."""
    row = session.execute(
        select(table, Job)
        .join(Job, Job.id == table.job_id)
        .where(table.id == row_id)
        .execution_options(populate_existing=True)
    ).first()
    return (row[0], row[1]) if row else None


ACTIVE_STATES = (JobState.RUNNING, JobState.CANCELLING)
# The lease owner of a job whose work runs elsewhere (Vertex AI) and that no worker holds: a
# poller advances it. Its heartbeat is NULL, so the stalled-job reclaimer never takes it.
REMOTE_LEASE = "remote"
NOTIFY_CHANNEL = "edge_automl_jobs"
_NOTIFIED_KEY = "jobs.notified_transaction"


def add(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def _changed(session: Session, statement: Executable) -> bool:
    """Run a write; whether it matched a row (the compare-and-set outcome)."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount > 0


def notify_new_job(session: Session) -> None:
    """Wake idle PostgreSQL workers when the caller's transaction commits (no-op on SQLite).

    PostgreSQL folds repeated notifications of one transaction into one, so a transaction
    that enqueues many jobs sends it once and saves the round trips.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    transaction = session.get_transaction()
    notified = session.info.get(_NOTIFIED_KEY)
    if transaction is not None and notified is not None and notified() is transaction:
        return
    session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    if transaction is not None:
        session.info[_NOTIFIED_KEY] = weakref.ref(transaction)


def insert_unless_duplicate(session: Session, values: dict[str, Any]) -> bool:
    """Insert a job unless one with the same ``dedupe_key`` exists; true when inserted."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(Job)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(Job.id)
    )
    return session.execute(statement).scalar_one_or_none() is not None


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def list_page(
    session: Session,
    *,
    limit: int,
    after: PageCursor | None,
    states: Collection[str] = (),
    kinds: Collection[str] = (),
) -> Sequence[Job]:
    query = newest_first(select(Job), time=Job.created_at, id=Job.id, after=after, limit=limit)
    if states:
        query = query.where(Job.state.in_(states))
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    return session.scalars(query).all()


def has_active(session: Session, *, kind: str, dedupe_prefix: str) -> bool:
    query = select(Job.id).where(
        Job.kind == kind,
        Job.dedupe_key.startswith(dedupe_prefix),
        Job.state.in_((JobState.QUEUED, *ACTIVE_STATES)),
    )
    return session.execute(query.limit(1)).first() is not None


def claim(session: Session, *, worker_id: str, kinds: Collection[str]) -> str | None:
    """Take the next due job atomically and mark it running; the id, or None when idle.

    One statement does both. On PostgreSQL the inner select skips rows other workers hold
    (``FOR UPDATE SKIP LOCKED``); SQLite has one writer at a time, and the repeated
    ``state = QUEUED`` guard makes the update a no-op if the row changed meanwhile.
    """
    now = utcnow()
    candidate = (
        select(Job.id)
        .where(Job.state == JobState.QUEUED, Job.run_after <= now, Job.kind.in_(kinds))
        .order_by(Job.run_after, Job.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(Job)
        .where(Job.id == candidate, Job.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING,
            lease_owner=worker_id,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).scalar_one_or_none()


def _leased(job_id: str, worker_id: str) -> Any:
    return and_(Job.id == job_id, Job.lease_owner == worker_id, Job.state.in_(ACTIVE_STATES))


def lease_held(job_id: str, worker_id: str) -> ColumnElement[bool]:
    """A condition true while ``worker_id`` holds the job's lease: a task's write to its own
    tables that carries it lands only if no other worker has reclaimed the job meanwhile."""
    return exists().where(_leased(job_id, worker_id))


def heartbeat(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    progress: float | None = None,
    progress_details: dict[str, Any] | None = None,
) -> str | None:
    """Renew the lease (and store progress); the job's state, or None if the lease is lost."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now}
    if progress is not None:
        values.update(progress=progress, updated_at=now)
    if progress_details is not None:
        values["progress_details"] = progress_details
    statement = (
        update(Job)
        .where(_leased(job_id, worker_id))
        .values(**values)
        .returning(Job.state)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).scalar_one_or_none()


def finish(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    state: JobState,
    duration_seconds: float,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Record a terminal outcome under the lease; false when another worker owns the job."""
    assert state in TERMINAL_STATES
    now = utcnow()
    values: dict[str, Any] = {
        "state": state,
        "result": result,
        "error": error,
        "lease_owner": None,
        "finished_at": now,
        "updated_at": now,
        "duration_seconds": duration_seconds,
    }
    if state == JobState.SUCCEEDED:
        values["progress"] = 1.0
    statement = (
        update(Job)
        .where(_leased(job_id, worker_id))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return _changed(session, statement)


def hand_off(session: Session, *, job_id: str, worker_id: str) -> bool:
    """Move a running job from a worker's lease to the remote lease (state unchanged, so a
    cancel asked meanwhile stays CANCELLING); false when the worker lost the lease."""
    statement = (
        update(Job)
        .where(_leased(job_id, worker_id))
        .values(lease_owner=REMOTE_LEASE, heartbeat_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _changed(session, statement)


def hand_back(session: Session, *, job_id: str) -> bool:
    """Put a remotely held job back in the queue for a worker's next step, with fresh tries
    (the remote part is done; the next step's failures count on their own). False when it
    is no longer remotely held and RUNNING (cancelled, finished, handed back already)."""
    now = utcnow()
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == REMOTE_LEASE, Job.state == JobState.RUNNING)
        .values(
            state=JobState.QUEUED,
            lease_owner=None,
            heartbeat_at=None,
            run_after=now,
            attempts=0,
            last_error=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    changed = _changed(session, statement)
    if changed:
        notify_new_job(session)
    return changed


def finish_remote(
    session: Session,
    *,
    job_id: str,
    state: JobState,
    error: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Record the outcome of a remotely held job (compare-and-set on the remote lease):
    false when another poller finished it first, or it is no longer remote."""
    started = session.scalar(select(Job.started_at).where(Job.id == job_id))
    duration = (utcnow() - started).total_seconds() if started is not None else 0.0
    return finish(
        session,
        job_id=job_id,
        worker_id=REMOTE_LEASE,
        state=state,
        duration_seconds=duration,
        result=result,
        error=error,
    )


def retry_later(
    session: Session, *, job_id: str, worker_id: str, run_after: datetime, error: dict[str, Any]
) -> bool:
    """Put a failed attempt back in the queue for another try at ``run_after``."""
    statement = (
        update(Job)
        .where(_leased(job_id, worker_id), Job.state == JobState.RUNNING)
        .values(
            state=JobState.QUEUED,
            lease_owner=None,
            run_after=run_after,
            last_error=error,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return _changed(session, statement)


def release(session: Session, *, job_id: str, worker_id: str) -> bool:
    """Hand a job back untouched (worker shutting down): the attempt does not count."""
    now = utcnow()
    statement = (
        update(Job)
        .where(_leased(job_id, worker_id))
        .values(
            state=case(
                (Job.state == JobState.CANCELLING, JobState.CANCELLED.value),
                else_=JobState.QUEUED.value,
            ),
            attempts=Job.attempts - 1,
            lease_owner=None,
            run_after=now,
            updated_at=now,
            finished_at=case((Job.state == JobState.CANCELLING, now), else_=None),
        )
        .execution_options(synchronize_session=False)
    )
    return _changed(session, statement)


def transition(
    session: Session, *, job_id: str, from_state: JobState, values: dict[str, Any]
) -> bool:
    """Change a job only if it is still in ``from_state`` (compare-and-set)."""
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.state == from_state)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return _changed(session, statement)


def stalled(session: Session, *, cutoff: datetime, limit: int = 100) -> Sequence[Job]:
    """Running jobs whose worker stopped heartbeating before ``cutoff``, locked for update."""
    query = (
        select(Job)
        .where(Job.state.in_(ACTIVE_STATES), Job.heartbeat_at < cutoff)
        .order_by(Job.heartbeat_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: count for state, count in rows}


def duration_histogram(
    session: Session, *, buckets: Sequence[float]
) -> list[tuple[str, str, list[int], int, float]]:
    """Per (kind, state): cumulative bucket counts, total count and sum of run seconds."""
    finished = Job.duration_seconds.is_not(None)
    columns = [func.sum(case((Job.duration_seconds <= bound, 1), else_=0)) for bound in buckets]
    query = (
        select(
            Job.kind,
            Job.state,
            func.count(),
            func.coalesce(func.sum(Job.duration_seconds), 0.0),
            *columns,
        )
        .where(finished)
        .group_by(Job.kind, Job.state)
    )
    return [
        (kind, state, [int(n or 0) for n in counts], int(total), float(seconds))
        for kind, state, total, seconds, *counts in session.execute(query).all()
    ]


def backoff(base_seconds: float, attempts: int) -> timedelta:
    """Exponential backoff after ``attempts`` failed tries, capped at one hour."""
    return timedelta(seconds=min(3600.0, base_seconds * 2 ** max(0, attempts - 1)))

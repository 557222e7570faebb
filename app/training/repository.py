"""Every query on training jobs (each read together with its queue job)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from app.db.job import Job, JobState
from app.db.training_job import Phase, TrainingJob
from app.jobs import repository as jobs_repository
from app.jobs.repository import ACTIVE_STATES, REMOTE_LEASE
from app.kit.clock import utcnow
from app.kit.pagination import PageCursor, newest_first


def add(session: Session, training_job: TrainingJob) -> TrainingJob:
    session.add(training_job)
    session.flush()
    return training_job


def get(session: Session, training_job_id: str) -> TrainingJob | None:
    return session.get(TrainingJob, training_job_id, populate_existing=True)


def get_with_job(session: Session, training_job_id: str) -> tuple[TrainingJob, Job] | None:
    return jobs_repository.get_with_job(session, TrainingJob, training_job_id)


def list_page(
    session: Session,
    *,
    limit: int,
    after: PageCursor | None,
    states: Collection[str] = (),
    dataset_id: str | None = None,
) -> Sequence[tuple[TrainingJob, Job]]:
    query = newest_first(
        cast("Select[Any]", select(TrainingJob, Job).join(Job, Job.id == TrainingJob.job_id)),
        time=TrainingJob.created_at,
        id=TrainingJob.id,
        after=after,
        limit=limit,
    )
    if states:
        query = query.where(Job.state.in_(states))
    if dataset_id is not None:
        query = query.where(TrainingJob.dataset_id == dataset_id)
    return [(training_job, job) for training_job, job in session.execute(query).all()]


def active_for_dataset(session: Session, dataset_id: str) -> str | None:
    """The id of a queued or running training job on the dataset, if there is one."""
    return session.scalar(
        select(TrainingJob.id)
        .join(Job, Job.id == TrainingJob.job_id)
        .where(
            TrainingJob.dataset_id == dataset_id,
            Job.state.in_((JobState.QUEUED, *ACTIVE_STATES)),
        )
        .limit(1)
    )


def set_progress(session: Session, training_job_id: str, progress: dict[str, Any]) -> None:
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == training_job_id)
        .values(progress=progress, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def set_values(session: Session, training_job_id: str, **values: Any) -> None:
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == training_job_id)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )


def merge_remote(session: Session, training_job_id: str, names: dict[str, Any]) -> None:
    """Add resource names to the job's ``remote`` (read under a row lock, then written)."""
    row = session.scalars(
        select(TrainingJob)
        .where(TrainingJob.id == training_job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    row.remote = {**(row.remote or {}), **names}
    row.updated_at = utcnow()
    session.flush()


def _remote_held() -> Any:
    return (
        (TrainingJob.phase == Phase.REMOTE)
        & (Job.lease_owner == REMOTE_LEASE)
        & Job.state.in_(ACTIVE_STATES)
    )


def due_for_poll(session: Session, *, now: datetime, limit: int) -> Sequence[str]:
    """Remote jobs whose next poll is due, the longest waiting first."""
    return session.scalars(
        select(TrainingJob.id)
        .join(Job, Job.id == TrainingJob.job_id)
        .where(_remote_held(), TrainingJob.next_poll_at <= now)
        .order_by(TrainingJob.next_poll_at)
        .limit(limit)
    ).all()


def any_remote(session: Session) -> bool:
    """Whether some job is held remotely (the poller has work, now or later)."""
    found = session.execute(
        select(TrainingJob.id)
        .join(Job, Job.id == TrainingJob.job_id)
        .where(_remote_held())
        .limit(1)
    ).first()
    return found is not None


def claim_poll(session: Session, training_job_id: str, *, now: datetime, until: datetime) -> bool:
    """Take the job's due poll (compare-and-set on ``next_poll_at``): two pollers never poll
    one job at once; a poller that dies frees it at ``until``."""
    result = session.execute(
        update(TrainingJob)
        .where(
            TrainingJob.id == training_job_id,
            TrainingJob.phase == Phase.REMOTE,
            TrainingJob.next_poll_at <= now,
        )
        .values(next_poll_at=until)
        .execution_options(synchronize_session=False)
    )
    return cast(Any, result).rowcount > 0

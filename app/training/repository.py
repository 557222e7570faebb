"""Every query on training jobs (each read together with its queue job)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from app.db.job import Job, JobState
from app.db.training_job import TrainingJob
from app.jobs import repository as jobs_repository
from app.jobs.repository import ACTIVE_STATES
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

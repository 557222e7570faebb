"""Every query on batch prediction jobs (each read together with its queue job)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

from sqlalchemy import Select, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from app.db.batch_prediction_job import BatchPredictionJob
from app.db.job import Job
from app.jobs import repository as jobs_repository
from app.jobs.repository import lease_held
from app.kit.clock import utcnow
from app.kit.pagination import PageCursor, newest_first


def add(session: Session, row: BatchPredictionJob) -> BatchPredictionJob:
    session.add(row)
    session.flush()
    return row


def get(session: Session, batch_job_id: str) -> BatchPredictionJob | None:
    return session.get(BatchPredictionJob, batch_job_id, populate_existing=True)


def get_with_job(session: Session, batch_job_id: str) -> tuple[BatchPredictionJob, Job] | None:
    return jobs_repository.get_with_job(session, BatchPredictionJob, batch_job_id)


def list_page(
    session: Session,
    *,
    limit: int,
    after: PageCursor | None,
    states: Collection[str] = (),
    model_id: str | None = None,
) -> Sequence[tuple[BatchPredictionJob, Job]]:
    query = newest_first(
        cast(
            "Select[Any]",
            select(BatchPredictionJob, Job).join(Job, Job.id == BatchPredictionJob.job_id),
        ),
        time=BatchPredictionJob.created_at,
        id=BatchPredictionJob.id,
        after=after,
        limit=limit,
    )
    if states:
        query = query.where(Job.state.in_(states))
    if model_id is not None:
        query = query.where(BatchPredictionJob.model_id == model_id)
    return [(row, job) for row, job in session.execute(query).all()]


def record_chunk(
    session: Session,
    *,
    batch_job_id: str,
    number: int,
    successful: int,
    failed: int,
    job_id: str,
    worker_id: str,
) -> bool:
    """Count chunk ``number`` (1-based) as finished, with its results, once: only when it is
    the next one and ``worker_id`` still holds the job's lease. False otherwise (another
    worker reclaimed the job, and owns its progress now)."""
    statement = (
        update(BatchPredictionJob)
        .where(
            BatchPredictionJob.id == batch_job_id,
            BatchPredictionJob.chunks_done == number - 1,
            lease_held(job_id, worker_id),
        )
        .values(
            chunks_done=number,
            successful_count=BatchPredictionJob.successful_count + successful,
            failed_count=BatchPredictionJob.failed_count + failed,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount > 0

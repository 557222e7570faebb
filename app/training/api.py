"""Training job routes: create (queues the training), list, get, cancel."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, Path, Query

from app.auth.dependencies import require
from app.auth.service import Scope
from app.db.job import Job, JobState
from app.db.training_job import TrainingJob
from app.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    error_responses,
)
from app.jobs.schemas import OperationError
from app.kit.ids import is_valid_id
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.training import service
from app.training.schemas import (
    BackendName,
    ImageCounts,
    TrainingJobCreate,
    TrainingJobList,
    TrainingJobRead,
    TrainingProgress,
)
from app.web.deps import BlobsDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["training"])

TrainingJobId = Annotated[str, Path(alias="trainingJobId")]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]


def training_job_read(training_job: TrainingJob, job: Job) -> TrainingJobRead:
    """The resource: the job's own row, with state and error from its queue job."""
    return TrainingJobRead(
        id=training_job.id,
        name=f"trainingJobs/{training_job.id}",
        display_name=training_job.display_name,
        dataset_id=training_job.dataset_id,
        model_type=training_job.model_type,
        state=JobState(job.state),
        budget_milli_node_hours=training_job.budget_milli_node_hours,
        cost_milli_node_hours=training_job.cost_milli_node_hours,
        successful_stop_reason=training_job.successful_stop_reason,
        disable_early_stopping=training_job.disable_early_stopping,
        base_model_id=training_job.base_model_id,
        seed=training_job.seed,
        labels=list(training_job.labels),
        image_counts=ImageCounts(
            train=training_job.train_image_count,
            validation=training_job.validation_image_count,
            test=training_job.test_image_count,
        ),
        progress=TrainingProgress.model_validate(training_job.progress)
        if training_job.progress
        else None,
        operation_id=job.id,
        operation_name=f"operations/{job.id}",
        attempts=job.attempts,
        error=OperationError(**job.error) if job.error else None,
        model_id=training_job.model_id,
        backend=cast(BackendName, training_job.backend),
        remote_state=training_job.remote_state,
        remote_resources=training_job.remote if training_job.backend != "local" else None,
        last_poll_error=OperationError(**training_job.last_poll_error)
        if training_job.last_poll_error
        else None,
        create_time=training_job.created_at,
        update_time=max(training_job.updated_at, job.updated_at),
        start_time=job.started_at,
        end_time=job.finished_at,
    )


# -- custom methods first: "/trainingJobs/{id}:cancel" must not match "/trainingJobs/{id}" --


@router.post(
    "/trainingJobs/{trainingJobId}:cancel",
    response_model=TrainingJobRead,
    dependencies=WRITE,
    responses=error_responses(NotFound, FailedPrecondition, *AUTH),
)
def cancel_training_job(
    training_job_id: TrainingJobId, session: SessionDep, blobs: BlobsDep
) -> TrainingJobRead:
    """Cancel a training job: a queued one at once, a running one at its next step."""
    return training_job_read(*service.cancel(session, blobs, training_job_id=training_job_id))


@router.post(
    "/trainingJobs",
    response_model=TrainingJobRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, FailedPrecondition, NotFound, *AUTH),
)
def create_training_job(
    body: TrainingJobCreate, session: SessionDep, blobs: BlobsDep, settings: SettingsDep
) -> TrainingJobRead:
    """Snapshot a dataset and queue training a detector on it within a budget."""
    training_job = service.create(session, blobs, settings, job_in=body)
    return training_job_read(*service.get(session, training_job_id=training_job.id))


@router.get(
    "/trainingJobs",
    response_model=TrainingJobList,
    dependencies=READ,
    responses=error_responses(InvalidInput, *AUTH),
)
def list_training_jobs(
    session: SessionDep,
    settings: SettingsDep,
    state: Annotated[list[JobState], Query(description="Only jobs in these states.")] = [],  # noqa: B006 - FastAPI copies defaults
    dataset_id: Annotated[
        str | None, Query(alias="datasetId", description="Only jobs trained on this dataset.")
    ] = None,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> TrainingJobList:
    """List training jobs, newest first."""
    if dataset_id is not None and not is_valid_id(dataset_id):
        raise InvalidInput.field("datasetId", "is not a valid id")
    states = sorted(s.value for s in state)
    filter_key = f"{','.join(states)}|{dataset_id or ''}"
    size = check_page_size(page_size, default=settings.default_page_size)
    rows, cursor = service.list_training_jobs(
        session,
        page_size=size,
        after=decode_token(page_token, filter_key=filter_key),
        states=states,
        dataset_id=dataset_id,
    )
    return TrainingJobList(
        training_jobs=[training_job_read(tj, job) for tj, job in rows],
        next_page_token=encode_token(cursor, filter_key=filter_key) if cursor else None,
    )


@router.get(
    "/trainingJobs/{trainingJobId}",
    response_model=TrainingJobRead,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_training_job(training_job_id: TrainingJobId, session: SessionDep) -> TrainingJobRead:
    """Get a training job: its state, progress while it runs, then its cost and model."""
    return training_job_read(*service.get(session, training_job_id=training_job_id))

"""Batch prediction routes: create (JSON, or multipart with the input file), list, get,
cancel, and the results as one JSON Lines stream."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.auth.dependencies import require
from app.auth.service import Scope
from app.batch_prediction import service
from app.batch_prediction.schemas import (
    BatchJobState,
    BatchPredictionJobCreate,
    BatchPredictionJobList,
    BatchPredictionJobRead,
    CompletionStats,
    InputConfigRead,
    OutputInfo,
)
from app.db.batch_prediction_job import BatchPredictionJob
from app.db.job import Job, JobState
from app.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    error_responses,
)
from app.inference.schemas import PredictParameters
from app.jobs.schemas import OperationError
from app.kit.blobs import BlobStore
from app.kit.ids import is_valid_id
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.web.deps import BlobsDep, SessionDep, SettingsDep
from app.web.openapi import inlined_schema

router = APIRouter(prefix="/v1", tags=["batch prediction"])

BatchJobId = Annotated[str, Path(alias="batchPredictionJobId")]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]
# The multipart form's fields besides "file"; each is the JSON body's field of that name.
FORM_FIELDS = ("displayName", "model", "modelVersion", "instancesFormat")
FORM_PARAMETERS = ("confidenceThreshold", "maxPredictions")


def batch_job_read(row: BatchPredictionJob, job: Job, blobs: BlobStore) -> BatchPredictionJobRead:
    """The resource: the job's own row, with state and error from its queue job."""
    done = row.successful_count + row.failed_count
    return BatchPredictionJobRead(
        id=row.id,
        name=f"batchPredictionJobs/{row.id}",
        display_name=row.display_name,
        model=row.model_id,
        model_version=row.model_version,
        artifact_sha256=row.artifact_sha256,
        input_config=InputConfigRead.model_validate(row.input_config),
        model_parameters=PredictParameters(
            confidence_threshold=row.confidence_threshold, max_predictions=row.max_predictions
        ),
        instance_count=row.instance_count,
        state=BatchJobState.of(JobState(job.state)),
        error=OperationError(**job.error) if job.error else None,
        completion_stats=CompletionStats(
            successful_count=row.successful_count,
            failed_count=row.failed_count,
            incomplete_count=row.instance_count - done,
        ),
        output_info=OutputInfo(
            output_directory=service.output_directory(blobs, row.id),
            prediction_file_count=row.chunks_done,
            predictions_path=f"/v1/batchPredictionJobs/{row.id}/predictions",
        ),
        operation_id=job.id,
        operation_name=f"operations/{job.id}",
        attempts=job.attempts,
        create_time=row.created_at,
        update_time=max(row.updated_at, job.updated_at),
        start_time=job.started_at,
        end_time=job.finished_at,
    )


_CREATE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": inlined_schema(BatchPredictionJobCreate)},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "displayName", "model"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "displayName": {"type": "string"},
                    "model": {"type": "string"},
                    "modelVersion": {"type": "integer"},
                    "instancesFormat": {
                        "type": "string",
                        "enum": ["jsonl", "csv"],
                        "description": "Default: from the file name (.jsonl, .csv).",
                    },
                    "confidenceThreshold": {"type": "number", "default": 0.0},
                    "maxPredictions": {"type": "integer", "default": 10},
                },
            }
        },
    },
}


# -- custom methods first: "/batchPredictionJobs/{id}:cancel" must not match "/{id}" ------


@router.post(
    "/batchPredictionJobs/{batchPredictionJobId}:cancel",
    response_model=BatchPredictionJobRead,
    dependencies=WRITE,
    responses=error_responses(NotFound, FailedPrecondition, *AUTH),
)
def cancel_batch_prediction_job(
    batch_job_id: BatchJobId, session: SessionDep, blobs: BlobsDep
) -> BatchPredictionJobRead:
    """Cancel a batch prediction job: a pending one at once, a running one after its current
    chunk (finished results stay readable)."""
    return batch_job_read(*service.cancel(session, batch_job_id=batch_job_id), blobs)


@router.post(
    "/batchPredictionJobs",
    response_model=BatchPredictionJobRead,
    dependencies=WRITE,
    openapi_extra={"requestBody": _CREATE_BODY},
    responses=error_responses(InvalidInput, FailedPrecondition, NotFound, PayloadTooLarge, *AUTH),
)
async def create_batch_prediction_job(
    request: Request, session: SessionDep, blobs: BlobsDep, settings: SettingsDep
) -> BatchPredictionJobRead:
    """Check a list of images and queue their prediction with a model version's ONNX file:
    JSON with inputConfig (gcsSource or datasetSource), or the input file as multipart field
    "file" with the other fields beside it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    upload: service.Upload | None = None
    if content_type == "multipart/form-data":
        form = await request.form()
        file = form.get("file")
        if not isinstance(file, StarletteUploadFile):
            raise InvalidInput.field("file", "a multipart field 'file' with the JSONL or CSV")
        filename = file.filename or "upload"
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        unknown = sorted(set(fields) - {*FORM_FIELDS, *FORM_PARAMETERS})
        if unknown:
            raise InvalidInput.field(
                unknown[0], f"unknown form field; send file and {', '.join(FORM_FIELDS)}"
            )
        instances_format = fields.get("instancesFormat") or service.format_of_filename(filename)
        if instances_format is None:
            raise InvalidInput.field(
                "instancesFormat", "is required unless the file is named *.jsonl or *.csv"
            )
        raw: dict[str, Any] = {
            "displayName": fields.get("displayName", ""),
            "model": fields.get("model", ""),
            "inputConfig": {"instancesFormat": instances_format},
            "modelParameters": {k: fields[k] for k in FORM_PARAMETERS if k in fields},
        }
        if fields.get("modelVersion"):
            raw["modelVersion"] = fields["modelVersion"]
        try:
            body = BatchPredictionJobCreate.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput.of_validation(exc) from None
        upload = await run_in_threadpool(
            service.read_upload, file.file, filename=filename, settings=settings
        )
    elif content_type == "application/json":
        try:
            body = BatchPredictionJobCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise InvalidInput.of_validation(exc) from None
    else:
        raise InvalidInput(
            'send JSON {"displayName", "model", "inputConfig": {...}} or the input file as '
            "multipart/form-data (field 'file')"
        )

    def create() -> BatchPredictionJobRead:
        row = service.create(session, blobs, settings, job_in=body, upload=upload)
        return batch_job_read(*service.get(session, batch_job_id=row.id), blobs)

    # Reading the input (Cloud Storage, disk) and checking each line is blocking work.
    return await run_in_threadpool(create)


@router.get(
    "/batchPredictionJobs",
    response_model=BatchPredictionJobList,
    dependencies=READ,
    responses=error_responses(InvalidInput, *AUTH),
)
def list_batch_prediction_jobs(
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    state: Annotated[list[BatchJobState], Query(description="Only jobs in these states.")] = [],  # noqa: B006 - FastAPI copies defaults
    model: Annotated[str | None, Query(description="Only jobs of this model (its id).")] = None,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> BatchPredictionJobList:
    """List batch prediction jobs, newest first."""
    model_id = model.removeprefix("models/") if model is not None else None
    if model_id is not None and not is_valid_id(model_id):
        raise InvalidInput.field("model", "is not a valid model id")
    states = sorted(set(state))
    filter_key = f"{','.join(states)}|{model_id or ''}"
    size = check_page_size(page_size, default=settings.default_page_size)
    rows, cursor = service.list_jobs(
        session,
        page_size=size,
        after=decode_token(page_token, filter_key=filter_key),
        states=states,
        model_id=model_id,
    )
    return BatchPredictionJobList(
        batch_prediction_jobs=[batch_job_read(row, job, blobs) for row, job in rows],
        next_page_token=encode_token(cursor, filter_key=filter_key) if cursor else None,
    )


@router.get(
    "/batchPredictionJobs/{batchPredictionJobId}",
    response_model=BatchPredictionJobRead,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_batch_prediction_job(
    batch_job_id: BatchJobId, session: SessionDep, blobs: BlobsDep
) -> BatchPredictionJobRead:
    """Get a batch prediction job: its state, completion counts and where its results are."""
    return batch_job_read(*service.get(session, batch_job_id=batch_job_id), blobs)


@router.get(
    "/batchPredictionJobs/{batchPredictionJobId}/predictions",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/jsonl": {"schema": {"type": "string", "format": "binary"}}},
            "description": 'JSON Lines, in input order: {"instance", "prediction"} with '
            ':predict\'s prediction, or {"instance", "error": {"code", "status", "message"}} '
            "for an image that could not be read. While the job runs, the finished part.",
        },
        **error_responses(NotFound, *AUTH),
    },
)
def get_batch_predictions(
    batch_job_id: BatchJobId, session: SessionDep, blobs: BlobsDep
) -> StreamingResponse:
    """Stream the job's results so far (every result once it succeeded) as JSON Lines."""
    row, _ = service.get(session, batch_job_id=batch_job_id)
    keys = service.finished_chunk_keys(row)
    return StreamingResponse(
        service.iter_predictions(blobs, keys),
        media_type="application/jsonl",
        headers={
            "Content-Disposition": f'attachment; filename="predictions-{row.id}.jsonl"',
            "X-Prediction-Count": str(row.successful_count + row.failed_count),
        },
    )

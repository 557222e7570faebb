"""Rules for batch prediction jobs: check the request and its input up front, freeze the list
of images, queue the job; read, list, cancel; where the results are.

Everything a job will predict is decided in the request that creates it: the model
version's ONNX file, and the instances, read from the input file (or the dataset) and
written to the blob store as ``instances.jsonl`` before the job row commits. A line the
job could never use is refused then, naming the line and the field, and nothing is kept.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, cast

from sqlalchemy.orm import Session

from app.batch_prediction import repository
from app.batch_prediction.formats import LineError, read_instances
from app.batch_prediction.schemas import (
    BatchJobState,
    BatchPredictionJobCreate,
    DatasetSource,
    FileUpload,
    InputConfigRead,
    InstancesFormat,
)
from app.config import Settings
from app.datasets import service as datasets_service
from app.datasets.formats import IndexFileError
from app.datasets.images import over_limit
from app.datasets.sources import FetchPolicy, SourceError, check_absolute, fetch
from app.db.batch_prediction_job import BatchPredictionJob
from app.db.job import Job, JobState
from app.db.model_version import ModelVersion
from app.errors import FailedPrecondition, InvalidInput, NotFound, PayloadTooLarge
from app.jobs import service as jobs_service
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.registry import service as registry_service

BATCH_PREDICT_KIND = "prediction.batch"
ONNX = "onnx"
# Bad lines named in one refusal; the message says how many there were in all.
MAX_REPORTED_LINES = 20
# The frozen instance list is spooled in memory up to this size, then on disk.
SPOOL_BYTES = 8 * 1024 * 1024


# -- storage layout ----------------------------------------------------------------------


def job_prefix(batch_job_id: str) -> str:
    return f"batchPredictionJobs/{batch_job_id}/"


def instances_key(batch_job_id: str) -> str:
    return f"{job_prefix(batch_job_id)}instances.jsonl"


def output_directory(blobs: BlobStore, batch_job_id: str) -> str:
    """The URI of the job's folder in the blob store (``gs://…/`` or ``file://…/``); a store
    names blobs, not folders, so it is the URI of a file in it without the file's name."""
    name = instances_key(batch_job_id).removeprefix(job_prefix(batch_job_id))
    return blobs.uri(instances_key(batch_job_id)).removesuffix(name)


def chunk_key(batch_job_id: str, number: int) -> str:
    """The result file of chunk ``number`` (1-based)."""
    return f"{job_prefix(batch_job_id)}predictions_{number:05d}.jsonl"


def chunk_count(row: BatchPredictionJob) -> int:
    return math.ceil(row.instance_count / row.chunk_size)


def finished_chunk_keys(row: BatchPredictionJob) -> list[str]:
    """The result files recorded as finished, in order: their lines are every result so far,
    each once (a file a dead worker left unrecorded is not among them)."""
    return [chunk_key(row.id, number) for number in range(1, row.chunks_done + 1)]


# -- create ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """An input file sent with the request."""

    filename: str
    data: bytes


@dataclass
class _Frozen:
    """The instance list being written: one line ``{"instance", "blobKey"?}`` per image."""

    out: IO[bytes]
    limit: int
    count: int = 0

    def add(self, instance: dict[str, Any], *, blob_key: str | None = None) -> None:
        if self.count >= self.limit:
            raise InvalidInput.field(
                "inputConfig",
                f"the input lists more than {self.limit:,} images, the limit of one job "
                "(EDGE_AUTOML_BATCH_PREDICTION_MAX_INSTANCES); split it into several jobs",
            )
        line: dict[str, Any] = {"instance": instance}
        if blob_key is not None:
            line["blobKey"] = blob_key
        self.out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self.count += 1


def create(
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    *,
    job_in: BatchPredictionJobCreate,
    upload: Upload | None = None,
) -> BatchPredictionJob:
    """Check the request and every line of its input, freeze the instances and queue the job,
    all in the caller's transaction; nothing is stored when anything is refused."""
    display_name = job_in.display_name.strip()
    if not display_name:
        raise InvalidInput.field("displayName", "must not be blank")
    if job_in.output_config is not None and job_in.output_config.gcs_destination is not None:
        raise InvalidInput.field(
            "outputConfig.gcsDestination",
            "is not supported: results are written to the service's blob store; read them "
            "with GET /v1/batchPredictionJobs/{id}/predictions",
        )
    model_id = job_in.model.removeprefix("models/")
    version = _version(session, model_id=model_id, number=job_in.model_version)
    artifact = registry_service.file_of(session, version, ONNX)
    if artifact is None:
        raise FailedPrecondition(
            f"model {model_id!r} version {version.version} has no ONNX file to predict with: "
            f'export it first (POST /v1/models/{model_id}:export {{"format": "onnx"}})'
        )
    policy = FetchPolicy.of(settings)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        frozen = _Frozen(spool, limit=settings.batch_prediction_max_instances)
        input_config = _freeze_input(
            session, blobs, settings, job_in=job_in, upload=upload, policy=policy, frozen=frozen
        )
        if frozen.count == 0:
            raise InvalidInput.field("inputConfig", "the input lists no images")
        batch_job_id = new_id()
        job = jobs_service.enqueue(
            session,
            kind=BATCH_PREDICT_KIND,
            payload={"batchPredictionJobId": batch_job_id},
            description=f"batch predict {display_name[:100]}",
        )
        now = utcnow()
        row = repository.add(
            session,
            BatchPredictionJob(
                id=batch_job_id,
                display_name=display_name,
                model_id=model_id,
                model_version=version.version,
                artifact_blob_key=artifact.key,
                artifact_sha256=artifact.sha256,
                input_config=input_config.model_dump(by_alias=True, exclude_none=True),
                instances_blob_key=instances_key(batch_job_id),
                instance_count=frozen.count,
                confidence_threshold=job_in.model_parameters.confidence_threshold,
                max_predictions=job_in.model_parameters.max_predictions,
                chunk_size=settings.batch_prediction_chunk_size,
                chunks_done=0,
                successful_count=0,
                failed_count=0,
                job_id=job.id,
                created_at=now,
                updated_at=now,
            ),
        )
        spool.seek(0)
        # Written last, before the commit: a job row never exists without its instances.
        blobs.put(row.instances_blob_key, cast(BinaryIO, spool), content_type="application/jsonl")
    return row


def _version(session: Session, *, model_id: str, number: int | None) -> ModelVersion:
    registry_service.get(session, model_id=model_id)
    if number is None:
        return registry_service.latest_version(session, model_id=model_id)
    version = registry_service.get_version(session, model_id=model_id, version=number)
    if version is None:
        raise NotFound(f"model {model_id!r} has no version {number}")
    return version


def _freeze_input(
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    *,
    job_in: BatchPredictionJobCreate,
    upload: Upload | None,
    policy: FetchPolicy,
    frozen: _Frozen,
) -> InputConfigRead:
    """Write the instances of the request's one source to ``frozen``; the source as shown."""
    config = job_in.input_config
    given = [
        name
        for name, present in (
            ("gcsSource", config.gcs_source is not None),
            ("datasetSource", config.dataset_source is not None),
            ("the uploaded file", upload is not None),
        )
        if present
    ]
    if len(given) != 1:
        raise InvalidInput.field(
            "inputConfig",
            "give exactly one source: gcsSource (with instancesFormat), datasetSource, or the "
            f"file uploaded as multipart field 'file' (got {', '.join(given) or 'none'})",
        )
    if config.dataset_source is not None:
        if config.instances_format is not None:
            raise InvalidInput.field(
                "inputConfig.instancesFormat",
                "applies to gcsSource and uploaded files, not to datasetSource",
            )
        _freeze_dataset(session, blobs, config.dataset_source, frozen)
        return InputConfigRead(dataset_source=config.dataset_source)
    instances_format = config.instances_format
    if instances_format is None:
        raise InvalidInput.field(
            "inputConfig.instancesFormat", 'is required with an input file: "jsonl" or "csv"'
        )
    if upload is not None:
        _freeze_file(io.BytesIO(upload.data), "file", instances_format, policy, frozen)
        return InputConfigRead(
            instances_format=instances_format, file_upload=FileUpload(filename=upload.filename)
        )
    assert config.gcs_source is not None
    uris = [uri.strip() for uri in config.gcs_source.uris]
    for index, uri in enumerate(uris):
        try:
            check_absolute(uri, policy=policy)
        except SourceError as exc:
            raise InvalidInput.field(f"inputConfig.gcsSource.uris[{index}]", str(exc)) from None
    for index, uri in enumerate(uris):
        where = f"inputConfig.gcsSource.uris[{index}]"
        try:
            data = fetch(uri, policy=policy, max_bytes=settings.batch_prediction_max_input_bytes)
        except SourceError as exc:
            raise InvalidInput.field(where, str(exc)) from None
        _freeze_file(io.BytesIO(data), where, instances_format, policy, frozen)
    return InputConfigRead(
        instances_format=instances_format,
        gcs_source=config.gcs_source.model_copy(update={"uris": uris}),
    )


def _freeze_file(
    stream: BinaryIO,
    where: str,
    instances_format: InstancesFormat,
    policy: FetchPolicy,
    frozen: _Frozen,
) -> None:
    """Add a file's instances, or refuse the request naming its bad lines (all of them
    counted, the first ``MAX_REPORTED_LINES`` listed)."""
    errors: list[LineError] = []
    error_count = 0
    try:
        for item in read_instances(stream, instances_format, policy=policy):
            if isinstance(item, LineError):
                error_count += 1
                if len(errors) < MAX_REPORTED_LINES:
                    errors.append(item)
            elif not error_count:
                frozen.add(item)
    except IndexFileError as exc:
        raise InvalidInput.field(where, str(exc)) from None
    if error_count:
        raise _bad_lines(where, errors, error_count)


def _line_field(where: str, error: LineError) -> str:
    return f"{where} line {error.line}" + (f": {error.field}" if error.field else "")


def _bad_lines(where: str, errors: Sequence[LineError], count: int) -> InvalidInput:
    first = errors[0]
    message = f"{_line_field(where, first)}: {first.message}"
    if count > 1:
        message = f"{count} lines of {where} are invalid; first, {message}"
    return InvalidInput(
        message,
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": _line_field(where, error), "description": error.message}
                    for error in errors
                ],
            }
        ],
    )


def _freeze_dataset(
    session: Session, blobs: BlobStore, source: DatasetSource, frozen: _Frozen
) -> None:
    """Add every image of the dataset (or its split), named by its blob store URI and id."""
    for dataset_image, image in datasets_service.images_of(
        session, dataset_id=source.dataset_id, split=source.split
    ):
        frozen.add(
            {
                "content": blobs.uri(image.blob_key),
                "mimeType": image.mime_type,
                "imageId": dataset_image.id,
            },
            blob_key=image.blob_key,
        )
    if frozen.count == 0:
        where = f" in its {source.split.value} split" if source.split else ""
        raise InvalidInput.field(
            "inputConfig.datasetSource", f"dataset {source.dataset_id!r} has no images{where}"
        )


def read_upload(stream: BinaryIO, *, filename: str, settings: Settings) -> Upload:
    """An uploaded input file, refused with 413 above the input size limit."""
    limit = settings.batch_prediction_max_input_bytes
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"file: {over_limit(len(data), limit)} (EDGE_AUTOML_BATCH_PREDICTION_MAX_INPUT_BYTES)"
        )
    return Upload(filename=filename[:200], data=data)


def format_of_filename(filename: str) -> InstancesFormat | None:
    """The instances format an uploaded file's name suggests, if any."""
    lowered = filename.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    return None


# -- read --------------------------------------------------------------------------------


def get(session: Session, *, batch_job_id: str) -> tuple[BatchPredictionJob, Job]:
    found = repository.get_with_job(session, batch_job_id) if is_valid_id(batch_job_id) else None
    if found is None:
        raise NotFound(f"batch prediction job {batch_job_id!r} not found")
    return found


def list_jobs(
    session: Session,
    *,
    page_size: int,
    after: PageCursor | None,
    states: Sequence[BatchJobState] = (),
    model_id: str | None = None,
) -> tuple[list[tuple[BatchPredictionJob, Job]], PageCursor | None]:
    rows = repository.list_page(
        session,
        limit=page_size + 1,
        after=after,
        states=[state.job_state.value for state in states],
        model_id=model_id,
    )
    if len(rows) <= page_size:
        return list(rows), None
    last = rows[page_size - 1][0]
    return list(rows[:page_size]), PageCursor(time=last.created_at, id=last.id)


def iter_predictions(blobs: BlobStore, keys: Iterable[str]) -> Iterator[bytes]:
    """The bytes of the finished result files, in order, streamed."""
    for key in keys:
        with blobs.open(key) as stream:
            while block := stream.read(1024 * 1024):
                yield block


# -- cancel ------------------------------------------------------------------------------


def cancel(session: Session, *, batch_job_id: str) -> tuple[BatchPredictionJob, Job]:
    """Cancel a job: a pending one at once, a running one after the chunk it is on (the
    finished chunks' results stay readable). Cancelling a finished job is a
    FAILED_PRECONDITION, as in Vertex AI."""
    row, job = get(session, batch_job_id=batch_job_id)
    state = JobState(job.state)
    if state.is_terminal and state != JobState.CANCELLED:
        raise FailedPrecondition(
            f"batch prediction job {batch_job_id!r} already finished as "
            f"{BatchJobState.of(state).value}"
        )
    return row, jobs_service.cancel(session, job_id=row.job_id)

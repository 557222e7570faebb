"""What a worker runs for a batch prediction job: the frozen instances, a chunk at a time,
through the version's ONNX file, each chunk's results written to the blob store and then
recorded on the job's row.

A chunk is recorded (``chunks_done`` and the counts, under the job's lease) only after its
file is stored, so a worker that dies leaves at most one unrecorded file behind, which the
next attempt writes again under the same name: results are never lost, redone beyond the
chunk that was under way, or duplicated. Cancellation and hand-backs are noticed between
chunks. An image that cannot be read or decoded is a result with an ``error``, never the
job's failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.batch_prediction import repository, service
from app.datasets.sources import FetchPolicy, SourceError, fetch
from app.db.batch_prediction_job import BatchPredictionJob
from app.errors import AppError, FailedPrecondition, NotFound
from app.inference import service as inference_service
from app.inference.schemas import PredictParameters
from app.jobs.context import JobContext, LeaseLost

if TYPE_CHECKING:
    import torch

    from app.detector.export import OnnxPredictor

log = logging.getLogger(__name__)

# google.rpc codes of the per-image errors that are not an AppError of ours.
_NOT_FOUND = {"code": 5, "status": "NOT_FOUND"}
_INVALID_ARGUMENT = {"code": 3, "status": "INVALID_ARGUMENT"}


@dataclass(frozen=True)
class _Job:
    """The job's settings, read once at the start of an attempt."""

    id: str
    job_id: str
    artifact_blob_key: str
    artifact_sha256: str
    instances_blob_key: str
    instance_count: int
    chunk_size: int
    chunk_count: int
    chunks_done: int
    parameters: PredictParameters

    @classmethod
    def of(cls, row: BatchPredictionJob) -> _Job:
        return cls(
            id=row.id,
            job_id=row.job_id,
            artifact_blob_key=row.artifact_blob_key,
            artifact_sha256=row.artifact_sha256,
            instances_blob_key=row.instances_blob_key,
            instance_count=row.instance_count,
            chunk_size=row.chunk_size,
            chunk_count=service.chunk_count(row),
            chunks_done=row.chunks_done,
            parameters=PredictParameters(
                confidence_threshold=row.confidence_threshold, max_predictions=row.max_predictions
            ),
        )


@dataclass(frozen=True)
class _Prepared:
    """One instance made ready: the model's input, or the error to report for it."""

    instance: dict[str, Any]
    image: torch.Tensor | None = None
    error: dict[str, Any] | None = None


def predict_batch(ctx: JobContext) -> dict[str, Any]:
    """Predict a batch job's remaining chunks (payload from service.create)."""
    batch_job_id: str = ctx.payload["batchPredictionJobId"]
    with ctx.transaction() as session:
        row = repository.get(session, batch_job_id)
        if row is None:
            raise NotFound(f"batch prediction job {batch_job_id!r} not found")
        job = _Job.of(row)
    resumed_after = job.chunks_done
    successful, failed = row.successful_count, row.failed_count
    _report(ctx, job, job.chunks_done, successful, failed)
    log.info(
        "prediction.batch.started",
        extra={
            "batch_prediction_job_id": job.id,
            "attempt": ctx.attempt,
            "resumed_after_chunk": resumed_after,
            "chunks": job.chunk_count,
        },
    )
    if job.chunks_done < job.chunk_count:
        predictor = _load(ctx, job)
        lines = ctx.blobs.get(job.instances_blob_key).splitlines()
        policy = FetchPolicy.of(ctx.settings)
        with ThreadPoolExecutor(ctx.settings.import_fetch_threads, "batch-fetch") as pool:
            for number in range(job.chunks_done + 1, job.chunk_count + 1):
                start = (number - 1) * job.chunk_size
                items = [json.loads(line) for line in lines[start : start + job.chunk_size]]
                prepared = list(
                    pool.map(lambda item: _prepare(ctx, item, predictor.input_size, policy), items)
                )
                ok, bad = _write_chunk(ctx, job, number, prepared, predictor)
                with ctx.transaction() as session:
                    recorded = repository.record_chunk(
                        session,
                        batch_job_id=job.id,
                        number=number,
                        successful=ok,
                        failed=bad,
                        job_id=job.job_id,
                        worker_id=ctx.worker_id,
                    )
                if not recorded:
                    raise LeaseLost(ctx.job_id)  # another worker owns the job and its chunks
                successful, failed = successful + ok, failed + bad
                if number < job.chunk_count:
                    # Cancel, hand-back or a lost lease stop the job here, between chunks.
                    _report(ctx, job, number, successful, failed)
    log.info(
        "prediction.batch.succeeded",
        extra={"batch_prediction_job_id": job.id, "successful": successful, "failed": failed},
    )
    return {
        "batchPredictionJobId": job.id,
        "name": f"batchPredictionJobs/{job.id}",
        "instanceCount": job.instance_count,
        "successfulCount": successful,
        "failedCount": failed,
        "predictionFileCount": job.chunk_count,
        "outputDirectory": service.output_directory(ctx.blobs, job.id),
        "resumedAfterChunk": resumed_after,
    }


def _report(ctx: JobContext, job: _Job, chunks_done: int, successful: int, failed: int) -> None:
    ctx.report_progress(
        chunks_done / job.chunk_count,
        instanceCount=job.instance_count,
        successfulCount=successful,
        failedCount=failed,
        chunksDone=chunks_done,
        chunkCount=job.chunk_count,
    )


def _load(ctx: JobContext, job: _Job) -> OnnxPredictor:
    from app.detector.export import OnnxPredictor

    data = ctx.blobs.get(job.artifact_blob_key)
    if hashlib.sha256(data).hexdigest() != job.artifact_sha256:
        raise FailedPrecondition(f"the stored ONNX file of batch job {job.id!r} is corrupt")
    try:
        return OnnxPredictor(data, threads=ctx.settings.inference_threads)
    except ValueError as exc:
        raise FailedPrecondition(f"the model's ONNX file cannot be run: {exc}") from exc


def _prepare(ctx: JobContext, item: dict[str, Any], size: int, policy: FetchPolicy) -> _Prepared:
    """Read and preprocess one image (on the fetch threads); its error if it cannot be."""
    instance: dict[str, Any] = item["instance"]
    where = instance["content"]
    try:
        if "blobKey" in item:
            data = ctx.blobs.get(item["blobKey"])
        else:
            data = fetch(where, policy=policy, max_bytes=ctx.settings.max_image_bytes)
        image = inference_service.image_input(data, size, ctx.settings, where=where)
    except AppError as exc:
        return _Prepared(instance, error={**_code(exc), "message": exc.message})
    except SourceError as exc:
        code = _NOT_FOUND if exc.reason == "not found" else _INVALID_ARGUMENT
        return _Prepared(instance, error={**code, "message": str(exc)})
    return _Prepared(instance, image=image)


def _code(exc: AppError) -> dict[str, Any]:
    return {"code": exc.rpc_code, "status": exc.status}


def _write_chunk(
    ctx: JobContext,
    job: _Job,
    number: int,
    prepared: list[_Prepared],
    predictor: OnnxPredictor,
) -> tuple[int, int]:
    """Predict a chunk's images and store its result file; (successful, failed) counts."""
    images = [p.image for p in prepared if p.image is not None]
    found = iter(predictor.predict(images))
    lines = []
    for item in prepared:
        if item.image is None:
            result: dict[str, Any] = {"instance": item.instance, "error": item.error}
        else:
            prediction = inference_service.prediction_of(
                next(found), predictor.labels, job.parameters
            )
            result = {"instance": item.instance, "prediction": prediction.model_dump(by_alias=True)}
        lines.append(json.dumps(result, separators=(",", ":")) + "\n")
    ctx.blobs.put(
        service.chunk_key(job.id, number),
        "".join(lines).encode(),
        content_type="application/jsonl",
    )
    successful = len(images)
    return successful, len(prepared) - successful

"""What a worker runs for an export: convert a model version's file and record the result."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from app.errors import FailedPrecondition, NotFound
from app.jobs.context import JobContext
from app.kit.blobs import BlobNotFound
from app.registry import service

log = logging.getLogger(__name__)


# Enough images for activation ranges (TFLite's guidance is 100-500), few enough that the
# calibration takes seconds on two cores.
CALIBRATION_IMAGES = 100


def _exporters(
    ctx: JobContext, training_job_id: str | None, input_size: int
) -> dict[str, Callable[[bytes], Any]]:
    # Imported here: torch, onnx and the converters load only in the worker that exports.
    from app.detector.export import export_onnx
    from app.detector.tflite import export_tflite, export_tflite_int8

    def int8(weights: bytes) -> Any:
        return export_tflite_int8(weights, _calibration_images(ctx, training_job_id, input_size))

    return {"onnx": export_onnx, "tflite": export_tflite, service.INT8: int8}


def _calibration_images(ctx: JobContext, training_job_id: str | None, size: int) -> list[Any]:
    """Up to CALIBRATION_IMAGES of the TRAIN images the version was trained on (its training
    job's snapshot), evenly spread, through the one preprocessing serving uses."""
    from app.detector.data import model_input
    from app.training import service as training_service
    from app.training.tasks import train_image_keys

    if training_job_id is None:
        raise FailedPrecondition("int8 export needs the images the model was trained on")
    with ctx.transaction() as session:
        training_job, _ = training_service.get(session, training_job_id=training_job_id)
        snapshot_key = training_job.snapshot_blob_key
    keys = train_image_keys(json.loads(ctx.blobs.get(snapshot_key)))
    step = max(1, len(keys) / CALIBRATION_IMAGES)
    chosen = [keys[int(i * step)] for i in range(min(len(keys), CALIBRATION_IMAGES))]
    images = []
    for key in chosen:
        try:
            images.append(model_input(ctx.blobs.get(key), size)[0])
        except BlobNotFound:
            continue  # an image deleted since training; the rest still calibrate
    if not images:
        raise FailedPrecondition("none of the images the model was trained on is stored anymore")
    return images


def export_model(ctx: JobContext) -> dict[str, Any]:
    """Export a model version to a format; an existing export is returned as it is."""
    model_id, number, format = (
        ctx.payload["modelId"],
        int(ctx.payload["modelVersion"]),
        ctx.payload["format"],
    )
    with ctx.transaction() as session:
        version = service.get_version(session, model_id=model_id, version=number)
        if version is None:
            raise NotFound(f"model {model_id!r} has no version {number}")
        existing = service.get_artifact(session, model_id=model_id, version=number, format=format)
        if existing is not None:
            return _response(model_id, number, format, existing.sha256, existing.size_bytes)
        weights_key, weights_sha256 = version.weights_blob_key, version.weights_sha256
        training_job_id = version.training_job_id
        input_size = service.get(session, model_id=model_id).input_size
    exporter = _exporters(ctx, training_job_id, input_size).get(format)
    if exporter is None:
        raise FailedPrecondition(f"export to {format} is not available in this build")
    weights = ctx.blobs.get(weights_key)
    if hashlib.sha256(weights).hexdigest() != weights_sha256:
        raise FailedPrecondition(f"the stored weights of {model_id!r} v{number} are corrupt")
    try:
        exported = exporter(weights)
    except ValueError as exc:
        raise FailedPrecondition(f"the model cannot be exported to {format}: {exc}") from exc
    ctx.checkpoint()
    stored = service.StoredFile(
        key=service.artifact_key(model_id, number, format),
        sha256=hashlib.sha256(exported.data).hexdigest(),
        size_bytes=len(exported.data),
    )
    # Deterministic bytes under a fixed key: a retried attempt writes the same file again.
    ctx.blobs.put(stored.key, exported.data, content_type="application/octet-stream")
    session = ctx.session
    version = service.get_version(session, model_id=model_id, version=number)
    assert version is not None
    service.add_artifact(
        session, version=version, format=format, stored=stored, details=exported.details
    )
    log.info(
        "registry.export.succeeded",
        extra={
            "model_id": model_id,
            "version": number,
            "format": format,
            "bytes": stored.size_bytes,
        },
    )
    return _response(model_id, number, format, stored.sha256, stored.size_bytes)


def _response(model_id: str, version: int, format: str, sha256: str, size: int) -> dict[str, Any]:
    return {
        "modelId": model_id,
        "modelVersion": version,
        "format": format,
        "sha256": sha256,
        "sizeBytes": size,
        "downloadPath": f"/v1/models/{model_id}/artifacts/{format}?modelVersion={version}",
    }


def purge_model_files(ctx: JobContext) -> dict[str, Any]:
    """Remove the files of a deleted model (queued by the deletion, so it runs only once the
    rows are gone for good); running it again finds nothing left to remove."""
    prefix = ctx.payload["prefix"]
    removed = 0
    for blob in list(ctx.blobs.list(prefix)):
        ctx.blobs.delete(blob.key)
        removed += 1
    log.info("registry.purge.succeeded", extra={"prefix": prefix, "files": removed})
    return {"prefix": prefix, "removedFiles": removed}

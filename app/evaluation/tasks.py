"""What a worker runs for an evaluation asked for over the API: read the split, predict it
with the chosen model file, store the metrics and matches, record the evaluation."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from app.db.dataset_image import Split
from app.errors import AppError, FailedPrecondition
from app.evaluation import service
from app.jobs.context import JobCancelled, JobContext, LeaseLost, WorkerStopping
from app.registry import service as registry_service

log = logging.getLogger(__name__)

# Predicting is most of the work; scoring and storing take the rest.
PREDICT_SHARE = 0.9


def evaluate(ctx: JobContext) -> dict[str, Any]:
    """Evaluate a model version's file on a dataset split (payload from service.create)."""
    payload = ctx.payload
    model_id, evaluation_id = payload["modelId"], payload["evaluationId"]
    try:
        return _evaluate(ctx, payload)
    except (LeaseLost, WorkerStopping):
        raise  # another worker owns the job, or this one is handed back: keep its blobs
    except Exception as exc:
        final = (
            isinstance(exc, JobCancelled)
            or (isinstance(exc, AppError) and exc.status_code < 500)
            or ctx.last_attempt
        )
        if final:
            service.discard_blobs(ctx.blobs, model_id=model_id, evaluation_id=evaluation_id)
        raise


def _evaluate(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    from app.detector.evaluate import evaluate as score

    model_id, evaluation_id = payload["modelId"], payload["evaluationId"]
    split = Split(payload["split"])
    with ctx.transaction() as session:
        model = registry_service.get(session, model_id=model_id)
        labels = list(model.labels)
        version = registry_service.version_of(
            session, model_id=model_id, version=payload["modelVersion"]
        )
        artifact = service.artifact_of(session, version, payload["artifactFormat"])
        # Read when the job runs: the split as it stands then (checked again, labels too).
        found = service.split_samples(
            session, dataset_id=payload["datasetId"], split=split, labels=labels
        )
    data = ctx.blobs.get(artifact.key)
    if hashlib.sha256(data).hexdigest() != artifact.sha256:
        raise FailedPrecondition(f"the stored {artifact.format} file of {model_id!r} is corrupt")

    def on_progress(done: int, total: int) -> None:
        ctx.report_progress(PREDICT_SHARE * done / total, imagesPredicted=done, imageCount=total)

    try:
        scored = score(
            data,
            found.samples,
            ctx.blobs.get,
            artifact_format=artifact.format,
            image_ids=found.image_ids,
            on_progress=on_progress,
        )
    except ValueError as exc:
        raise FailedPrecondition(f"the model file cannot be evaluated: {exc}") from exc
    if list(scored.matches.labels) != labels:
        raise FailedPrecondition(f"the {artifact.format} file's labels differ from the model's")
    metrics_key = service.store_scored(
        ctx.blobs, model_id=model_id, evaluation_id=evaluation_id, scored=scored
    )
    ctx.checkpoint()
    # Committed together with the job's SUCCEEDED state.
    evaluation = service.add_evaluation(
        ctx.session,
        evaluation_id=evaluation_id,
        model_version=version,
        dataset_id=payload["datasetId"],
        split=split.value,
        artifact=artifact,
        metrics_blob_key=metrics_key,
        summary=service.EvaluationSummary.of(scored),
    )
    log.info(
        "evaluation.job.succeeded",
        extra={"evaluation_id": evaluation_id, "model_id": model_id, "images": scored.image_count},
    )
    return {
        "evaluationId": evaluation.id,
        "name": service.evaluation_name(evaluation),
        "modelId": model_id,
        "modelVersion": version.version,
        "artifactFormat": artifact.format,
        "split": split.value,
        "imageCount": scored.image_count,
        "boundingBoxMeanAveragePrecision": evaluation.bounding_box_mean_average_precision,
        "ap50": evaluation.ap50,
        "ap50To95": evaluation.ap50_95,
        "inferenceSeconds": round(scored.inference_seconds, 3),
        "metricSeconds": round(scored.metric_seconds, 3),
    }

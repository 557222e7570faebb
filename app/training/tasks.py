"""What a worker runs for a training job: train on the snapshot, store and evaluate the model.

The detector core (``app.detector``) does the training and scoring; this wrapper owns
everything around it: progress on the job, checkpoints in the blob store (a crashed attempt
resumes from the last epoch), the model file, the evaluation, the registry rows, and the
clean-up of whatever a cancelled or finally failed job stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.db.dataset_image import Split
from app.db.job import JobState
from app.db.training_job import TrainingJob
from app.detector.types import Evaluation as DetectorEvaluation
from app.detector.types import Progress, Sample, TrainConfig, TrainResult
from app.errors import AppError, FailedPrecondition, NotFound
from app.evaluation import service as evaluation_service
from app.jobs import repository as jobs_repository
from app.jobs.context import JobCancelled, JobContext, LeaseLost, WorkerStopping
from app.kit.clock import utcnow
from app.registry import service as registry_service
from app.training import repository, service
from app.training.schemas import SECONDS_PER_MILLI_NODE_HOUR, TrainingProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """The training job's settings, read once at the start of an attempt."""

    id: str
    display_name: str
    dataset_id: str
    model_type: str
    budget_milli_node_hours: int
    disable_early_stopping: bool
    seed: int
    snapshot_blob_key: str

    @classmethod
    def of(cls, row: TrainingJob) -> _Job:
        return cls(
            id=row.id,
            display_name=row.display_name,
            dataset_id=row.dataset_id,
            model_type=row.model_type,
            budget_milli_node_hours=row.budget_milli_node_hours,
            disable_early_stopping=row.disable_early_stopping,
            seed=row.seed,
            snapshot_blob_key=row.snapshot_blob_key,
        )


def _mnh(seconds: float) -> float:
    return round(seconds / SECONDS_PER_MILLI_NODE_HOUR, 3)


def _cost(elapsed_seconds: float) -> int:
    """Milli-node-hours, rounded up: the trainer keeps the final evaluation inside the budget,
    so this stays within it without being clamped to it."""
    # Rounded first so that 36.0 s is 10 and not 11 (36 / 3.6 = 10.000000000000002).
    return math.ceil(round(elapsed_seconds / SECONDS_PER_MILLI_NODE_HOUR, 6))


def samples_by_split(snapshot: dict[str, Any]) -> dict[Split, list[Sample]]:
    """The snapshot's images as detector samples keyed by blob key, per split."""
    samples: dict[Split, list[Sample]] = {split: [] for split in Split}
    for image in snapshot["images"]:
        boxes = image["boxes"]
        samples[Split(image["split"])].append(
            Sample(
                key=image["blobKey"],
                boxes=np.array([box[1:] for box in boxes], dtype=np.float32).reshape(-1, 4),
                labels=np.array([box[0] for box in boxes], dtype=np.int64),
            )
        )
    return samples


def train_image_keys(snapshot: dict[str, Any]) -> list[str]:
    """The blob keys of the snapshot's TRAIN images, in the snapshot's order."""
    return [image["blobKey"] for image in snapshot["images"] if image["split"] == Split.TRAIN]


class TrainingRun:
    """One attempt at a training job."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.blobs = ctx.blobs
        self.training_job_id: str = ctx.payload["trainingJobId"]
        self.interval = ctx.settings.training_progress_seconds
        self.last_report = -math.inf
        self.last_progress: Progress | None = None
        self.first_epoch: int | None = None

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except LeaseLost:
            raise  # another worker owns the job now: touch nothing of it
        except WorkerStopping:
            # Handed back: the checkpoint stays so that the next attempt resumes from it,
            # unless the job was also being cancelled (then the hand-back cancels it).
            if self._cancelling():
                self._discard()
            raise
        except Exception as exc:
            # Cancelled, refused (a 4xx error is never retried), or the last try crashed:
            # the job is over, so nothing half-made may stay. Other crashes resume later.
            final = (
                isinstance(exc, JobCancelled)
                or (isinstance(exc, AppError) and exc.status_code < 500)
                or self.ctx.last_attempt
                or self._cancelling()
            )
            if final:
                self._discard()
            raise

    def _run(self) -> dict[str, Any]:
        with self.ctx.transaction() as session:
            row = repository.get(session, self.training_job_id)
            if row is None:
                raise NotFound(f"training job {self.training_job_id!r} not found")
            job = _Job.of(row)
        snapshot: dict[str, Any] = json.loads(self.blobs.get(job.snapshot_blob_key))
        labels = tuple(snapshot["labels"])
        samples = samples_by_split(snapshot)
        checkpoint_key = service.checkpoint_key(job.id)
        resume = self.blobs.get(checkpoint_key) if self.blobs.exists(checkpoint_key) else None
        base_model = (
            self.blobs.get(snapshot["baseModel"]["weightsBlobKey"])
            if snapshot.get("baseModel")
            else None
        )
        settings = self.ctx.settings
        scored_split = Split.TEST if samples[Split.TEST] else Split.VALIDATION
        config = TrainConfig(
            model_type=job.model_type,
            labels=labels,
            budget_seconds=job.budget_milli_node_hours * SECONDS_PER_MILLI_NODE_HOUR,
            disable_early_stopping=job.disable_early_stopping,
            seed=job.seed,
            max_epochs=settings.training_max_epochs,
            threads=settings.training_threads,
            # The evaluation after training happens inside the budget too.
            final_eval_images=len(samples[scored_split]),
        )
        log.info(
            "training.job.started",
            extra={
                "training_job_id": job.id,
                "attempt": self.ctx.attempt,
                "resumed": resume is not None,
                "train_images": len(samples[Split.TRAIN]),
            },
        )
        from app.detector.trainer import train

        try:
            result = train(
                config,
                samples[Split.TRAIN],
                samples[Split.VALIDATION],
                self.blobs.get,
                hooks=self,
                resume=resume,
                base_model=base_model,
            )
        except ValueError as exc:
            # The core refuses input it cannot train on (e.g. a base model's labels): final.
            raise FailedPrecondition(f"training refused the job: {exc}") from exc
        self.ctx.checkpoint()
        # The dataset's image ids, in the samples' order, name the images of the evaluation.
        scored_ids = [i["id"] for i in snapshot["images"] if i["split"] == scored_split.value]
        return self._finish(
            job,
            labels,
            samples[scored_split],
            scored_ids,
            scored_split,
            result,
            resumed=resume is not None,
        )

    # -- hooks (app.detector.types.TrainHooks) ---------------------------------------------

    def on_step(self, progress: Progress) -> None:
        """Throttled progress; every step also checks for cancellation and lost leases."""
        self.last_progress = progress
        if self.first_epoch is None:
            self.first_epoch = progress.epoch
        if time.monotonic() - self.last_report >= self.interval:
            self._report(progress)
        else:
            self.ctx.checkpoint()

    def on_epoch(self, progress: Progress, checkpoint: bytes) -> None:
        """Store the state to resume from before anything else learns of the epoch."""
        self.last_progress = progress
        if self.first_epoch is None:
            self.first_epoch = progress.epoch
        self.blobs.put(service.checkpoint_key(self.training_job_id), checkpoint, durable=True)
        self._report(progress)

    def _progress(self, progress: Progress, *, fraction: float | None = None) -> dict[str, Any]:
        return TrainingProgress(
            epoch=progress.epoch,
            fraction=round(progress.fraction if fraction is None else fraction, 4),
            elapsed_milli_node_hours=_mnh(progress.elapsed_seconds),
            remaining_milli_node_hours=_mnh(max(0.0, progress.remaining_seconds)),
            losses={name: float(value) for name, value in progress.losses.items()},
            validation_mean_average_precision=progress.val_map50,
            best_validation_mean_average_precision=progress.best_val_map50,
            images_per_second=round(progress.images_per_second, 2),
        ).model_dump(by_alias=True)

    def _report(self, progress: Progress) -> None:
        self.last_report = time.monotonic()
        details = self._progress(progress)
        # The operation first: it raises when the job was cancelled or reclaimed, and then
        # the training job's row must not be written.
        self.ctx.report_progress(
            progress.fraction, **{k: v for k, v in details.items() if k != "fraction"}
        )
        with self.ctx.transaction() as session:
            repository.set_progress(session, self.training_job_id, details)

    # -- the outcome -----------------------------------------------------------------------

    def _finish(
        self,
        job: _Job,
        labels: tuple[str, ...],
        eval_samples: list[Sample],
        eval_ids: list[str],
        split: Split,
        result: TrainResult,
        *,
        resumed: bool,
    ) -> dict[str, Any]:
        from app.detector.bundle import load_bundle
        from app.detector.evaluate import evaluate

        finishing = time.monotonic()
        bundle = load_bundle(result.model)
        if bundle.labels != labels:
            raise RuntimeError(f"the trained model has labels {bundle.labels}, not {labels}")
        model_id = service.model_id_for(job.id)
        weights = registry_service.StoredFile(
            key=registry_service.weights_key(model_id, 1),
            sha256=hashlib.sha256(result.model).hexdigest(),
            size_bytes=len(result.model),
        )
        self.blobs.put(weights.key, result.model, content_type="application/octet-stream")

        scored: DetectorEvaluation | None = None
        evaluation_id = service.evaluation_id_for(job.id)
        metrics_key = ""
        if eval_samples:
            scored = evaluate(result.model, eval_samples, self.blobs.get, image_ids=eval_ids)
            metrics_key = evaluation_service.store_scored(
                self.blobs, model_id=model_id, evaluation_id=evaluation_id, scored=scored
            )
        self.ctx.checkpoint()

        # Everything below is committed together with the job's SUCCEEDED state.
        session = self.ctx.session
        _, version = registry_service.create_model(
            session,
            model_id=model_id,
            display_name=job.display_name,
            labels=list(bundle.labels),
            model_type=str(bundle.model_type),
            input_size=bundle.input_size,
            training_job_id=job.id,
            weights=weights,
        )
        evaluation = None
        if scored is not None:
            evaluation = evaluation_service.add_evaluation(
                session,
                evaluation_id=evaluation_id,
                model_version=version,
                dataset_id=job.dataset_id,
                split=split.value,
                artifact=evaluation_service.artifact_of(
                    session, version, evaluation_service.ARTIFACT_PYTORCH
                ),
                metrics_blob_key=metrics_key,
                summary=evaluation_service.EvaluationSummary.of(scored),
            )
        # The budget covers training and the evaluation after it.
        cost = _cost(result.elapsed_seconds + time.monotonic() - finishing)
        row = repository.get(session, job.id)
        assert row is not None
        row.model_id = model_id
        row.cost_milli_node_hours = cost
        row.successful_stop_reason = result.stop_reason
        row.progress = self._final_progress(result, job.budget_milli_node_hours)
        row.updated_at = utcnow()
        session.flush()
        # The run is over; a resumed attempt would train again rather than load this.
        self.blobs.delete(service.checkpoint_key(job.id))
        log.info(
            "training.job.succeeded",
            extra={"training_job_id": job.id, "model_id": model_id, "cost": cost},
        )
        return {
            "trainingJobId": job.id,
            "modelId": model_id,
            "modelVersion": version.version,
            "costMilliNodeHours": cost,
            "successfulStopReason": result.stop_reason,
            "epochs": result.epochs,
            "steps": result.steps,
            "resumedAtEpoch": self.first_epoch if resumed else None,
            "bestValidationMeanAveragePrecision": result.best_val_map50,
            "imagesPerSecond": result.images_per_second,
            "dataWaitShare": result.data_wait_share,
            "elapsedSeconds": result.elapsed_seconds,
            "evaluation": None
            if evaluation is None
            else {
                "id": evaluation.id,
                "name": f"models/{model_id}/evaluations/{evaluation.id}",
                "split": evaluation.split,
                "boundingBoxMeanAveragePrecision": evaluation.bounding_box_mean_average_precision,
                "ap50": evaluation.ap50,
                "ap50To95": evaluation.ap50_95,
                "evaluatedBoundingBoxCount": evaluation.evaluated_bounding_box_count,
                "imageCount": evaluation.image_count,
            },
        }

    def _final_progress(self, result: TrainResult, budget: int) -> dict[str, Any]:
        last = self.last_progress
        elapsed = _mnh(result.elapsed_seconds)
        return TrainingProgress(
            epoch=result.epochs,
            fraction=1.0,
            elapsed_milli_node_hours=elapsed,
            remaining_milli_node_hours=round(max(0.0, budget - elapsed), 3),
            losses=dict(last.losses) if last else {},
            validation_mean_average_precision=last.val_map50 if last else None,
            best_validation_mean_average_precision=result.best_val_map50,
            images_per_second=round(result.images_per_second, 2),
        ).model_dump(by_alias=True)

    # -- clean-up --------------------------------------------------------------------------

    def _cancelling(self) -> bool:
        """Whether someone asked to cancel the job (the heartbeat may not have seen it yet)."""
        if self.ctx.cancel_requested.is_set():
            return True
        try:
            with self.ctx.transaction() as session:
                job = jobs_repository.get(session, self.ctx.job_id)
                return job is not None and job.state in (JobState.CANCELLING, JobState.CANCELLED)
        except Exception:
            # The database being away is why we are here, often: keep the checkpoint.
            log.warning("training.job.state_unknown", exc_info=True)
            return False

    def _discard(self) -> None:
        """Delete the snapshot, checkpoint and any model files of this job."""
        service.discard_blobs(self.blobs, training_job_id=self.training_job_id)
        log.info("training.job.discarded", extra={"training_job_id": self.training_job_id})


def train(ctx: JobContext) -> dict[str, Any]:
    """Train a detector for a training job, then register and evaluate the model."""
    return TrainingRun(ctx).run()

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.api_core import exceptions as google_exceptions
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.dataset_image import Split
from app.db.evaluation import Evaluation
from app.db.job import JobState
from app.db.model_version import ModelVersion
from app.db.training_job import Backend, Phase, TrainingJob
from app.detector.types import Evaluation as DetectorEvaluation
from app.detector.types import Progress, Sample, TrainConfig, TrainResult
from app.errors import AppError, FailedPrecondition, NotFound
from app.evaluation import service as evaluation_service
from app.jobs import repository as jobs_repository
from app.jobs.context import (
    HandedOff,
    JobCancelled,
    JobContext,
    JobInterrupted,
    LeaseLost,
    WorkerStopping,
)
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.registry import service as registry_service
from app.training import backends, repository, service
from app.training.backends.base import (
    Collected,
    RemoteRun,
    TrainingBackend,
    is_transient,
    remote_error,
)
from app.training.schemas import SECONDS_PER_MILLI_NODE_HOUR, TrainingProgress

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def scored_split(samples: dict[Split, list[Sample]]) -> Split:
    """The split a trained model is scored on: TEST, or VALIDATION where TEST is empty."""
    return Split.TEST if samples[Split.TEST] else Split.VALIDATION


def train_config(
    *,
    model_type: str,
    labels: tuple[str, ...],
    samples: dict[Split, list[Sample]],
    budget_milli_node_hours: int,
    disable_early_stopping: bool,
    seed: int,
    max_epochs: int | None,
    threads: int | None,
) -> TrainConfig:
    """What a worker's :class:`TrainingRun` and the remote trainer ask of the core alike."""
    return TrainConfig(
        model_type=model_type,
        labels=labels,
        budget_seconds=budget_milli_node_hours * SECONDS_PER_MILLI_NODE_HOUR,
        disable_early_stopping=disable_early_stopping,
        seed=seed,
        max_epochs=max_epochs,
        threads=threads,
        # The scored split's evaluation after training happens inside the budget too.
        final_eval_images=len(samples[scored_split(samples)]),
    )


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
        config = train_config(
            model_type=job.model_type,
            labels=labels,
            samples=samples,
            budget_milli_node_hours=job.budget_milli_node_hours,
            disable_early_stopping=job.disable_early_stopping,
            seed=job.seed,
            max_epochs=settings.training_max_epochs,
            threads=settings.training_threads,
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
        scored = scored_split(samples)
        scored_ids = [i["id"] for i in snapshot["images"] if i["split"] == scored.value]
        return self._finish(
            job,
            labels,
            samples[scored],
            scored_ids,
            scored,
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
        finishing = time.monotonic()
        model_id = service.model_id_for(job.id)
        version, evaluation = register_trained(
            self.ctx, job, labels, result.model, eval_samples, eval_ids, split
        )
        session = self.ctx.session
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
            "evaluation": evaluation_result(evaluation),
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


# -- registering a trained model ---------------------------------------------------------


def register_trained(
    ctx: JobContext,
    job: _Job,
    labels: tuple[str, ...],
    model: bytes,
    eval_samples: list[Sample],
    eval_ids: list[str],
    split: Split,
) -> tuple[ModelVersion, Evaluation | None]:
    """Store a model trained by this project's trainer (here or on Vertex AI), score it on
    ``split`` and register it with its evaluation in ``ctx.session`` (uncommitted)."""
    from app.detector.bundle import load_bundle
    from app.detector.evaluate import evaluate

    bundle = load_bundle(model)
    if bundle.labels != labels:
        raise RuntimeError(f"the trained model has labels {bundle.labels}, not {labels}")
    model_id = service.model_id_for(job.id)
    weights = registry_service.StoredFile(
        key=registry_service.weights_key(model_id, 1),
        sha256=hashlib.sha256(model).hexdigest(),
        size_bytes=len(model),
    )
    ctx.blobs.put(weights.key, model, content_type="application/octet-stream")

    scored: DetectorEvaluation | None = None
    evaluation_id = service.evaluation_id_for(job.id)
    metrics_key = ""
    if eval_samples:
        scored = evaluate(model, eval_samples, ctx.blobs.get, image_ids=eval_ids)
        metrics_key = evaluation_service.store_scored(
            ctx.blobs, model_id=model_id, evaluation_id=evaluation_id, scored=scored
        )
    ctx.checkpoint()

    # Everything below is committed together with the job's SUCCEEDED state.
    session = ctx.session
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
    return version, evaluation


def evaluation_result(evaluation: Evaluation | None) -> dict[str, Any] | None:
    """An evaluation as the training job's result names it."""
    if evaluation is None:
        return None
    return {
        "id": evaluation.id,
        "name": f"models/{evaluation.model_id}/evaluations/{evaluation.id}",
        "split": evaluation.split,
        "boundingBoxMeanAveragePrecision": evaluation.bounding_box_mean_average_precision,
        "ap50": evaluation.ap50,
        "ap50To95": evaluation.ap50_95,
        "evaluatedBoundingBoxCount": evaluation.evaluated_bounding_box_count,
        "imageCount": evaluation.image_count,
    }


def _register_weights(ctx: JobContext, job: _Job, run: RemoteRun, got: Collected) -> dict[str, Any]:
    """A remote run of this project's trainer: scored and registered as a local job's model."""
    assert got.weights is not None
    snapshot = run.snapshot()
    samples = samples_by_split(snapshot)
    split = Split.TEST if samples[Split.TEST] else Split.VALIDATION
    ids = [i["id"] for i in snapshot["images"] if i["split"] == split.value]
    version, evaluation = register_trained(
        ctx, job, run.labels, got.weights, samples[split], ids, split
    )
    if got.remote_model_name is not None:
        version.remote_model_name = got.remote_model_name
    return {"modelVersion": version.version, "evaluation": evaluation_result(evaluation)}


def _register_tflite(ctx: JobContext, job: _Job, run: RemoteRun, got: Collected) -> dict[str, Any]:
    """Vertex AI's TFLite export: checked like an upload, registered with Vertex's metrics."""
    from app.detector.tflite_check import TfliteRejected, inspect_tflite

    assert got.tflite is not None
    try:
        facts = inspect_tflite(got.tflite, max_bytes=ctx.settings.max_tflite_bytes)
    except TfliteRejected as exc:
        raise FailedPrecondition(
            f"the model's TFLite export cannot be served: {exc.message} ({exc.code})"
        ) from None
    if set(facts.labels) != set(run.labels):
        raise FailedPrecondition(
            f"the exported model's labels differ from the job's: "
            f"{service.label_difference(facts.labels, run.labels)}"
        )
    model_id = service.model_id_for(job.id)
    stored = registry_service.StoredFile(
        key=registry_service.artifact_key(model_id, 1, registry_service.TFLITE),
        sha256=hashlib.sha256(got.tflite).hexdigest(),
        size_bytes=len(got.tflite),
    )
    ctx.blobs.put(stored.key, got.tflite, content_type="application/octet-stream")
    evaluation_id = service.evaluation_id_for(job.id)
    stored_metrics = None
    if got.evaluation is not None:
        stored_metrics = evaluation_service.store_document(
            ctx.blobs, model_id=model_id, evaluation_id=evaluation_id, document=got.evaluation
        )
    ctx.checkpoint()

    # Everything below is committed together with the job's SUCCEEDED state.
    session = ctx.session
    _, version = registry_service.create_model(
        session,
        model_id=model_id,
        display_name=job.display_name,
        # The file's order: a class id in its outputs means this label.
        labels=list(facts.labels),
        model_type=job.model_type,
        input_size=facts.input_size,
        training_job_id=job.id,
        weights=stored,
        source="vertex",
        format=registry_service.TFLITE,
        remote_model_name=got.remote_model_name,
    )
    artifact = registry_service.add_artifact(
        session,
        version=version,
        format=registry_service.TFLITE,
        stored=stored,
        details={
            **registry_service.tflite_details(facts),
            "remoteModelName": got.remote_model_name,
        },
    )
    evaluation = None
    if stored_metrics is not None:
        metrics_key, summary = stored_metrics
        evaluation = evaluation_service.add_evaluation(
            session,
            evaluation_id=evaluation_id,
            model_version=version,
            dataset_id=job.dataset_id,
            # Vertex AI scores the model on the TEST split of the imported data.
            split=Split.TEST.value,
            artifact=registry_service.VersionFile(
                artifact.format, artifact.blob_key, artifact.sha256, artifact.size_bytes
            ),
            metrics_blob_key=metrics_key,
            summary=summary,
        )
    return {"modelVersion": version.version, "evaluation": evaluation_result(evaluation)}


# -- remote backends: the worker's steps ---------------------------------------------------


def _saver(
    session_factory: sessionmaker[Session], training_job_id: str
) -> Callable[[dict[str, Any]], None]:
    def save(names: dict[str, Any]) -> None:
        # Committed at once and never guarded by a lease: a resource that exists must be
        # named on the row, whoever made it, or a retried step would make a second one.
        with session_factory.begin() as session:
            repository.merge_remote(session, training_job_id, names)

    return save


def remote_run(
    row: TrainingJob,
    *,
    settings: Settings,
    blobs: BlobStore,
    session_factory: sessionmaker[Session],
    ctx: JobContext | None = None,
) -> RemoteRun:
    """The job as a backend sees it (values copied: the row's session may end first)."""
    return RemoteRun(
        training_job_id=row.id,
        display_name=row.display_name,
        dataset_id=row.dataset_id,
        model_type=row.model_type,
        budget_milli_node_hours=row.budget_milli_node_hours,
        disable_early_stopping=row.disable_early_stopping,
        seed=row.seed,
        labels=tuple(row.labels),
        snapshot_blob_key=row.snapshot_blob_key,
        remote=dict(row.remote or {}),
        settings=settings,
        blobs=blobs,
        _save=_saver(session_factory, row.id),
        ctx=ctx,
    )


def _final(ctx: JobContext, exc: BaseException) -> bool:
    """Whether a step's failure ends the job (so what it stored locally must go)."""
    return (
        isinstance(exc, JobCancelled)
        or (isinstance(exc, AppError) and exc.status_code < 500)
        or ctx.last_attempt
    )


def _remote_call(backend: TrainingBackend, step: str, call: Callable[[], T]) -> T:
    """Run a backend step; Google API and connection errors become errors the worker
    retries (transient) or records as the job's failure (permanent, with the remote message)."""
    if backend.name == Backend.LOCAL:
        return call()
    try:
        return call()
    except (JobInterrupted, AppError):
        raise
    except Exception as exc:
        if isinstance(exc, google_exceptions.GoogleAPICallError) or is_transient(exc):
            raise remote_error(exc, doing=f"{backend.name} {step}") from exc
        raise


def _submit(ctx: JobContext, backend: TrainingBackend, run: RemoteRun) -> dict[str, Any]:
    """Create the remote run, then hand the job to the poller (no worker waits on it)."""
    _remote_call(backend, "submit", lambda: backend.submit(run))
    if run.finished is not None:  # the local backend trained here and registered the model
        return run.finished
    # Not checkpointed from here on: the remote run exists, so a cancel asked meanwhile is
    # the poller's to carry out (it cancels the remote run too).
    ctx.session.execute(
        update(TrainingJob)
        .where(
            TrainingJob.id == run.training_job_id,
            jobs_repository.lease_held(ctx.job_id, ctx.worker_id),
        )
        .values(
            phase=Phase.REMOTE,
            next_poll_at=utcnow(),
            poll_failures=0,
            last_poll_error=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    log.info(
        "training.remote.submitted",
        extra={"training_job_id": run.training_job_id, "backend": backend.name},
    )
    raise HandedOff(ctx.job_id)


def _collect(
    ctx: JobContext, backend: TrainingBackend, run: RemoteRun, job: _Job
) -> dict[str, Any]:
    """Fetch what the remote run made and register it; committed with SUCCEEDED."""
    got = _remote_call(backend, "collect", lambda: backend.collect(run))
    ctx.checkpoint()
    if got.tflite is not None:
        registered = _register_tflite(ctx, job, run, got)
    elif got.weights is not None:
        registered = _register_weights(ctx, job, run, got)
    else:
        raise RuntimeError(f"the {backend.name} backend collected no model file")
    model_id = service.model_id_for(job.id)
    session = ctx.session
    row = repository.get(session, job.id)
    assert row is not None
    row.model_id = model_id
    row.cost_milli_node_hours = got.cost_milli_node_hours
    row.successful_stop_reason = got.successful_stop_reason
    if got.progress is not None:
        row.progress = got.progress
    row.updated_at = utcnow()
    session.flush()
    log.info(
        "training.job.succeeded",
        extra={"training_job_id": job.id, "model_id": model_id, "backend": backend.name},
    )
    return {
        "trainingJobId": job.id,
        "backend": backend.name,
        "modelId": model_id,
        "costMilliNodeHours": got.cost_milli_node_hours,
        "successfulStopReason": got.successful_stop_reason,
        "remoteModelName": got.remote_model_name,
        **got.details,
        **registered,
    }


def train(ctx: JobContext) -> dict[str, Any]:
    """Train a detector for a training job, then register and evaluate the model.

    A local job trains here. A remote one runs in steps, each a claim of this queue job:
    SUBMITTING creates the remote run and hands the job to the poller (``poller.py``), which
    hands it back once the run succeeded; COLLECTING then fetches and registers the model.
    """
    training_job_id: str = ctx.payload["trainingJobId"]
    with ctx.transaction() as session:
        row = repository.get(session, training_job_id)
        if row is None:
            raise NotFound(f"training job {training_job_id!r} not found")
        job = _Job.of(row)
        phase = row.phase
        backend = backends.get_backend(row.backend, ctx.settings)
        run = remote_run(
            row,
            settings=ctx.settings,
            blobs=ctx.blobs,
            session_factory=ctx.session_factory,
            ctx=ctx,
        )
    try:
        if phase == Phase.COLLECTING:
            return _collect(ctx, backend, run, job)
        return _submit(ctx, backend, run)
    except (HandedOff, LeaseLost, WorkerStopping):
        raise
    except Exception as exc:
        # The job is over (cancelled, refused, out of tries): nothing half-made may stay here.
        # (Files in the staging bucket stay: they are the operator's, and Vertex's records.)
        if _final(ctx, exc):
            service.discard_blobs(ctx.blobs, training_job_id=training_job_id)
        raise

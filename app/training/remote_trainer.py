"""The ``train-job`` command's work: train on a frozen dataset snapshot, away from the service.

A Vertex AI custom job runs this in the project's container image (the ``vertex-custom``
backend), and anyone can run it locally. Everything it needs is on its command line and in
the snapshot; it knows nothing of the database or the API. It reads the snapshot and its
images through a blob store (``gs://`` or a local folder) and writes, under the output prefix:

- ``progress.json`` after every epoch (and at most every ``progress_seconds`` between);
- ``checkpoint.pt`` after every epoch, so a restarted job (Vertex restarts preempted
  workers) resumes where it stopped, its earlier time counted against the budget;
- ``model.pt``, the trained model file, then ``result.json``, written last: its presence
  means the run is done, and a run started again then does nothing;
- ``error.json`` when the input is refused, so the service can show why (Vertex only reports
  the exit status).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from app.kit.blobs import BlobStore, open_blob_store
from app.kit.clock import utcnow

if TYPE_CHECKING:
    from app.detector.types import Progress

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
RESULT_FORMAT = "edge-automl-train-job-result/1"
DEFAULT_PROGRESS_SECONDS = 30.0


class JobInputError(Exception):
    """The job cannot run as given (a missing snapshot, a wrong store, refused settings).

    Retrying the same command fails the same way, so the command exits non-zero at once with
    this message rather than a traceback."""


# -- the job's description ---------------------------------------------------------------


@dataclass(frozen=True)
class TrainJobSpec:
    """What one run trains: the ``train-job`` command line as data.

    ``snapshot_url`` names the snapshot file (``gs://bucket/.../snapshot.json``, ``file://``
    or a path); ``images_url`` the blob store its blob keys (images, base model weights) are
    read from; ``output_url`` the store the run writes to.
    """

    snapshot_url: str
    images_url: str
    output_url: str
    model_type: str
    budget_milli_node_hours: int
    disable_early_stopping: bool = False
    seed: int = 0
    max_epochs: int | None = None
    threads: int | None = None
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS

    def args(self) -> list[str]:
        """The ``edge-automl`` arguments that run this job (``train-job`` first)."""
        args = [
            "train-job",
            "--snapshot",
            self.snapshot_url,
            "--images-from",
            self.images_url,
            "--output",
            self.output_url,
            "--model-type",
            self.model_type,
            "--budget-milli-node-hours",
            str(self.budget_milli_node_hours),
            "--seed",
            str(self.seed),
        ]
        if self.disable_early_stopping:
            args.append("--disable-early-stopping")
        if self.max_epochs is not None:
            args += ["--max-epochs", str(self.max_epochs)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.progress_seconds != DEFAULT_PROGRESS_SECONDS:
            args += ["--progress-seconds", f"{self.progress_seconds:g}"]
        return args


# -- locations ---------------------------------------------------------------------------


def store_url(location: str) -> str:
    """A blob store URL for ``location``: ``gs://`` and ``file://`` as given, a path as file://."""
    if location.startswith(("gs://", "file://")):
        return location
    return Path(location).expanduser().resolve().as_uri()


def open_store(location: str, *, what: str) -> BlobStore:
    try:
        return open_blob_store(store_url(location))
    except ValueError as exc:
        raise JobInputError(f"{what}: {exc}") from None


def read_object(location: str, *, what: str) -> bytes:
    """The bytes of one file named by a ``gs://`` URL, a ``file://`` URL or a path."""
    from app.kit.blobs import BlobNotFound

    if location.startswith("gs://"):
        parent, _, name = location.rstrip("/").rpartition("/")
        if not name or parent == "gs:/":
            raise JobInputError(f"{what} {location!r} names a bucket, not a file")
        try:
            return open_store(parent, what=what).get(name)
        except BlobNotFound:
            raise JobInputError(f"{what} {location!r} does not exist") from None
    if location.startswith("file://"):
        path = Path(unquote(location.removeprefix("file://")))
    else:
        path = Path(location).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JobInputError(f"{what} {location!r} cannot be read: {exc.strerror}") from None


# -- the run -----------------------------------------------------------------------------


def _checked(spec: TrainJobSpec) -> str:
    """The model type's canonical name, once the spec's numbers are known to be sane."""
    from app.detector.spec import resolve_model_type
    from app.training.schemas import MAX_BUDGET_MILLI_NODE_HOURS, MIN_BUDGET_MILLI_NODE_HOURS

    try:
        model_type = resolve_model_type(spec.model_type).value
    except ValueError as exc:
        raise JobInputError(f"--model-type: {exc}") from None
    budget = spec.budget_milli_node_hours
    if not MIN_BUDGET_MILLI_NODE_HOURS <= budget <= MAX_BUDGET_MILLI_NODE_HOURS:
        raise JobInputError(
            f"--budget-milli-node-hours: {budget} is out of range: must be between "
            f"{MIN_BUDGET_MILLI_NODE_HOURS} and {MAX_BUDGET_MILLI_NODE_HOURS}"
        )
    return model_type


def load_snapshot(spec: TrainJobSpec) -> dict[str, Any]:
    from app.training.service import SNAPSHOT_FORMAT

    raw = read_object(spec.snapshot_url, what="the snapshot")
    try:
        snapshot = json.loads(raw)
    except ValueError as exc:
        raise JobInputError(f"the snapshot {spec.snapshot_url!r} is not JSON: {exc}") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        found = snapshot.get("format") if isinstance(snapshot, dict) else None
        raise JobInputError(
            f"{spec.snapshot_url!r} is not a training snapshot: its format is {found!r}, "
            f"not {SNAPSHOT_FORMAT!r}"
        )
    return snapshot


def run(spec: TrainJobSpec) -> dict[str, Any]:
    """Train as ``spec`` says, writing to its output; the result (also ``result.json``).

    A run whose output already holds ``result.json`` returns that result without training;
    one whose output holds a checkpoint resumes from it.
    """
    from app.db.dataset_image import Split
    from app.training.tasks import samples_by_split, train_config

    output = open_store(spec.output_url, what="--output")
    if output.exists(RESULT_FILE):
        result: dict[str, Any] = json.loads(output.get(RESULT_FILE))
        log.info("training.train_job.already_done", extra={"output": spec.output_url})
        return result
    output.delete(ERROR_FILE)  # an earlier attempt's refusal no longer holds

    model_type = _checked(spec)
    snapshot = load_snapshot(spec)
    images = open_store(spec.images_url, what="--images-from")
    samples = samples_by_split(snapshot)
    if not samples[Split.TRAIN]:
        raise JobInputError(f"the snapshot {spec.snapshot_url!r} has no TRAIN images")
    # One look before minutes of start-up: a wrong --images-from is the likely mistake.
    first = samples[Split.TRAIN][0].key
    if not images.exists(first):
        raise JobInputError(
            f"image {first!r} of the snapshot is not in --images-from {spec.images_url!r}: "
            "it must be the blob store the snapshot's keys were written to"
        )
    base_model = _base_model(snapshot, images, spec.images_url)
    resume = output.get(CHECKPOINT_FILE) if output.exists(CHECKPOINT_FILE) else None

    config = train_config(
        model_type=model_type,
        labels=tuple(snapshot["labels"]),
        samples=samples,
        budget_milli_node_hours=spec.budget_milli_node_hours,
        disable_early_stopping=spec.disable_early_stopping,
        seed=spec.seed,
        max_epochs=spec.max_epochs,
        threads=spec.threads,
    )
    hooks = _OutputHooks(output, spec, budget_seconds=config.budget_seconds)
    log.info(
        "training.train_job.started",
        extra={
            "training_job_id": snapshot.get("trainingJobId"),
            "output": spec.output_url,
            "resumed": resume is not None,
            "train_images": len(samples[Split.TRAIN]),
        },
    )
    from app.detector.trainer import train

    try:
        trained = train(
            config,
            samples[Split.TRAIN],
            samples[Split.VALIDATION],
            images.get,
            hooks=hooks,
            resume=resume,
            base_model=base_model,
        )
    except ValueError as exc:
        # The core refuses input it cannot train on (a checkpoint of another job, say).
        raise JobInputError(f"training refused the job: {exc}") from exc

    output.put(MODEL_FILE, trained.model, content_type="application/octet-stream")
    result = {
        "format": RESULT_FORMAT,
        "trainingJobId": snapshot.get("trainingJobId"),
        "modelType": model_type,
        "labels": list(config.labels),
        "stopReason": trained.stop_reason,
        "epochs": trained.epochs,
        "steps": trained.steps,
        "resumedAtEpoch": hooks.first_epoch if resume is not None else None,
        "elapsedSeconds": round(trained.elapsed_seconds, 3),
        "bestValidationMeanAveragePrecision": trained.best_val_map50,
        "imagesPerSecond": round(trained.images_per_second, 3),
        "dataWaitShare": round(trained.data_wait_share, 4),
        "modelSha256": hashlib.sha256(trained.model).hexdigest(),
        "modelSizeBytes": len(trained.model),
        "history": trained.history,
        "finishTime": utcnow().isoformat(),
    }
    hooks.write_progress(hooks.last, fraction=1.0, epoch=trained.epochs)
    # Last: its presence tells the service (and a restarted run) that model.pt is complete.
    output.put(RESULT_FILE, _json(result), content_type="application/json")
    output.delete(CHECKPOINT_FILE)
    log.info(
        "training.train_job.succeeded",
        extra={"output": spec.output_url, "epochs": trained.epochs},
    )
    return result


def record_refusal(spec: TrainJobSpec, message: str) -> None:
    """Best effort: leave the refusal's message beside the outputs for the service to show."""
    try:
        output = open_blob_store(store_url(spec.output_url))
        output.put(
            ERROR_FILE,
            _json(
                {
                    "code": 3,  # google.rpc.Code INVALID_ARGUMENT, as Vertex writes errors
                    "status": "INVALID_ARGUMENT",
                    "message": message,
                    "time": utcnow().isoformat(),
                }
            ),
            content_type="application/json",
        )
    except Exception:
        log.warning("training.train_job.error_not_recorded", exc_info=True)


def _base_model(snapshot: dict[str, Any], images: BlobStore, images_url: str) -> bytes | None:
    from app.kit.blobs import BlobNotFound

    base = snapshot.get("baseModel")
    if not base:
        return None
    key = base["weightsBlobKey"]
    try:
        data = images.get(key)
    except BlobNotFound:
        raise JobInputError(
            f"the base model's weights {key!r} are not in --images-from {images_url!r}"
        ) from None
    if base.get("sha256") and hashlib.sha256(data).hexdigest() != base["sha256"]:
        raise JobInputError(f"the base model's weights {key!r} do not match their sha256")
    return data


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _OutputHooks:
    """The trainer's hooks: progress and checkpoints into the output store."""

    def __init__(self, output: BlobStore, spec: TrainJobSpec, *, budget_seconds: float) -> None:
        self.output = output
        self.interval = spec.progress_seconds
        self.budget_seconds = budget_seconds
        self.last_write = -math.inf
        self.last: Progress | None = None
        self.first_epoch: int | None = None

    def on_step(self, progress: Progress) -> None:
        self._seen(progress)
        if time.monotonic() - self.last_write >= self.interval:
            self.write_progress(progress)

    def on_epoch(self, progress: Progress, checkpoint: bytes) -> None:
        # The checkpoint first: progress must never claim an epoch a restart would not find.
        self._seen(progress)
        self.output.put(CHECKPOINT_FILE, checkpoint, content_type="application/octet-stream")
        self.write_progress(progress)

    def _seen(self, progress: Progress) -> None:
        self.last = progress
        if self.first_epoch is None:
            self.first_epoch = progress.epoch

    def write_progress(
        self, progress: Progress | None, *, fraction: float | None = None, epoch: int | None = None
    ) -> None:
        """``progress.json``: seconds, not milli-node-hours; the service converts."""
        self.last_write = time.monotonic()
        if progress is None:
            return
        body = {
            "epoch": progress.epoch if epoch is None else epoch,
            "step": progress.step,
            "fraction": round(progress.fraction if fraction is None else fraction, 4),
            "elapsedSeconds": round(progress.elapsed_seconds, 3),
            "remainingSeconds": round(max(0.0, progress.remaining_seconds), 3),
            "budgetSeconds": self.budget_seconds,
            "losses": {name: float(value) for name, value in progress.losses.items()},
            "validationMeanAveragePrecision": progress.val_map50,
            "bestValidationMeanAveragePrecision": progress.best_val_map50,
            "imagesPerSecond": round(progress.images_per_second, 3),
            "updateTime": utcnow().isoformat(),
        }
        self.output.put(PROGRESS_FILE, _json(body), content_type="application/json")

"""The vertex-custom backend: this project's own trainer as a Vertex AI custom job.

``submit`` points a CustomJob running the project's image (``edge-automl train-job``, see
:mod:`app.training.remote_trainer`) at the job's frozen snapshot and its images: in place
when the service's blob store is Cloud Storage, else copied first to
``{staging}/edge-automl/{trainingJobId}/data/``. The job writes progress, checkpoints, the
model and its result under ``{staging}/edge-automl/{trainingJobId}/output/``; ``poll`` reads
the job's state and the progress, ``collect`` the checked model file, which the service then
evaluates and registers as it does a local job's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as google_exceptions

from app.config import Settings
from app.kit.blobs import BlobNotFound, BlobStore
from app.training import remote_trainer
from app.training.backends.base import (
    Collected,
    RemoteCallPermanent,
    RemoteRun,
    RemoteState,
    RemoteStatus,
    remote_error,
)
from app.training.backends.vertex_clients import VertexClients, staging_uri, vertex_clients
from app.training.schemas import SECONDS_PER_MILLI_NODE_HOUR

if TYPE_CHECKING:
    from app.kit.blobs.gcs import GcsBlobStore

log = logging.getLogger(__name__)

# What the container runs; the image's entrypoint is the same command, but naming it keeps
# the job right for an image built with another entrypoint.
CONTAINER_COMMAND = ["edge-automl"]
# Lets an operator find the job of a training job in the console (label values: [a-z0-9_-]).
JOB_LABEL = "edge-automl-training-job"
COPY_THREADS = 8
# Vertex's timeout for the job: the budget, plus room for pulling the image, reading the
# data, and restarts of a preempted machine (each loses up to an epoch).
TIMEOUT_BUDGET_FACTOR = 1.5
TIMEOUT_MARGIN_SECONDS = 3600

_RUNNING_STATES = {
    "JOB_STATE_UNSPECIFIED",
    "JOB_STATE_QUEUED",
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_UPDATING",
    "JOB_STATE_PAUSED",
    "JOB_STATE_CANCELLING",
}


class VertexCustomBackend:
    """Trains with ``edge-automl train-job`` in a Vertex AI CustomJob."""

    name = "vertex-custom"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def clients(self) -> VertexClients:
        return vertex_clients(self.settings)

    # -- submit ----------------------------------------------------------------------------

    def submit(self, run: RemoteRun) -> None:
        """Stage the data if it is not in Cloud Storage, then create the CustomJob once."""
        if run.remote.get("customJobName"):
            return  # a retried submit: the job exists
        output_uri = run.remote.get("outputUri") or self.output_uri(run.training_job_id)
        snapshot_url, images_url = self.stage(run)
        run.save_remote(outputUri=output_uri, snapshotUri=snapshot_url, imagesUri=images_url)
        job = self.custom_job(run, self.job_spec(run, snapshot_url, images_url, output_uri))
        run.checkpoint()
        # A worker dying between this call and save_remote would leave this job unrecorded
        # and a retried submit would make a second: the label lets an operator find it.
        try:
            created = self.clients.job.create_custom_job(parent=self.clients.parent, custom_job=job)
        except (google_exceptions.GoogleAPICallError, google_exceptions.RetryError) as exc:
            raise remote_error(exc, doing="Vertex AI CreateCustomJob") from exc
        run.save_remote(customJobName=created.name)
        log.info(
            "training.vertex_custom.submitted",
            extra={"training_job_id": run.training_job_id, "custom_job": created.name},
        )

    def output_uri(self, training_job_id: str) -> str:
        return staging_uri(self.settings, training_job_id, "output")

    def job_spec(
        self, run: RemoteRun, snapshot_url: str, images_url: str, output_uri: str
    ) -> remote_trainer.TrainJobSpec:
        """The ``train-job`` command line of this training job."""
        return remote_trainer.TrainJobSpec(
            snapshot_url=snapshot_url,
            images_url=images_url,
            output_url=output_uri,
            model_type=run.model_type,
            budget_milli_node_hours=run.budget_milli_node_hours,
            disable_early_stopping=run.disable_early_stopping,
            seed=run.seed,
            max_epochs=self.settings.training_max_epochs,
            # Written as often as it is read, but not more than once a second: Cloud Storage
            # accepts about one write a second to one object.
            progress_seconds=max(1.0, self.settings.remote_poll_seconds),
        )

    def custom_job(self, run: RemoteRun, spec: remote_trainer.TrainJobSpec) -> Any:
        from google.cloud.aiplatform_v1 import types
        from google.protobuf import duration_pb2

        settings = self.settings
        machine = types.MachineSpec(machine_type=settings.vertex_custom_machine_type)
        if name := settings.vertex_custom_accelerator_type:
            accelerator = types.AcceleratorType.__members__.get(name)
            if accelerator is None:
                choices = ", ".join(a for a in types.AcceleratorType.__members__ if "NVIDIA" in a)
                raise RemoteCallPermanent(
                    f"EDGE_AUTOML_VERTEX_CUSTOM_ACCELERATOR_TYPE={name!r} is not a Vertex AI "
                    f"accelerator type (e.g. {choices})",
                    code=3,
                )
            machine.accelerator_type = accelerator
            machine.accelerator_count = max(1, settings.vertex_custom_accelerator_count)
        budget_seconds = run.budget_milli_node_hours * SECONDS_PER_MILLI_NODE_HOUR
        timeout = math.ceil(budget_seconds * TIMEOUT_BUDGET_FACTOR + TIMEOUT_MARGIN_SECONDS)
        return types.CustomJob(
            display_name=f"edge-automl {run.display_name}"[:128],
            labels={JOB_LABEL: run.training_job_id.lower()[:63]},
            job_spec=types.CustomJobSpec(
                worker_pool_specs=[
                    types.WorkerPoolSpec(
                        machine_spec=machine,
                        replica_count=1,
                        container_spec=types.ContainerSpec(
                            image_uri=settings.vertex_custom_image,
                            command=CONTAINER_COMMAND,
                            args=spec.args(),
                        ),
                    )
                ],
                service_account=settings.vertex_service_account or "",
                base_output_directory=types.GcsDestination(output_uri_prefix=spec.output_url),
                scheduling=types.Scheduling(timeout=duration_pb2.Duration(seconds=timeout)),
            ),
        )

    # -- staging ---------------------------------------------------------------------------

    def stage(self, run: RemoteRun) -> tuple[str, str]:
        """Where the job reads the snapshot and its blob keys: (snapshot URL, store URL)."""
        if run.blobs.url.startswith("gs://"):
            # Read in place: the job's service account needs read access to this bucket.
            return run.blobs.uri(run.snapshot_blob_key), run.blobs.url
        data = self._store(staging_uri(self.settings, run.training_job_id, "data"))
        copied = self._copy_missing(run, data, list(dict.fromkeys(staged_keys(run.snapshot()))))
        log.info(
            "training.vertex_custom.staged",
            extra={"training_job_id": run.training_job_id, "copied": copied, "to": data.url},
        )
        return data.uri(run.snapshot_blob_key), data.url

    def _copy_missing(self, run: RemoteRun, data: BlobStore, keys: list[str]) -> int:
        """Copy what ``data`` lacks of ``keys``, then the snapshot: staged data that holds the
        snapshot holds everything it names, and a retried submit copies only the rest."""
        try:
            present = {info.key for info in data.list()}
            missing = [key for key in keys if key not in present]
            with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="vertex-stage") as pool:
                for _ in pool.map(lambda key: self._copy(run.blobs, data, key), missing):
                    run.checkpoint()
            if run.snapshot_blob_key not in present:
                self._copy(run.blobs, data, run.snapshot_blob_key)
        except google_exceptions.GoogleAPICallError as exc:
            raise remote_error(exc, doing="Cloud Storage staging upload") from exc
        return len(missing)

    @staticmethod
    def _copy(source: BlobStore, target: BlobStore, key: str) -> None:
        with source.open(key) as reader:
            target.put(key, reader, content_type=source.stat(key).content_type)

    def _store(self, url: str) -> GcsBlobStore:
        """A blob store on the staging bucket through the Vertex settings' storage client."""
        from app.kit.blobs.gcs import GcsBlobStore

        bucket, _, prefix = url.removeprefix("gs://").partition("/")
        return GcsBlobStore(
            url=url, client=self.clients.storage, bucket=bucket, prefix=prefix.rstrip("/")
        )

    # -- poll and cancel -------------------------------------------------------------------

    def poll(self, run: RemoteRun) -> RemoteStatus:
        """The CustomJob's state, with the trainer's progress while it runs (best effort)."""
        name = self._job_name(run)
        try:
            job = self.clients.job.get_custom_job(name=name)
        except (google_exceptions.GoogleAPICallError, google_exceptions.RetryError) as exc:
            raise remote_error(exc, doing="Vertex AI GetCustomJob") from exc
        state = job.state.name
        if state in _RUNNING_STATES:
            return RemoteStatus(RemoteState.RUNNING, state, progress=self._progress(run))
        if state == "JOB_STATE_SUCCEEDED":
            return RemoteStatus(RemoteState.SUCCEEDED, state, progress=self._progress(run))
        error = {"code": job.error.code, "message": job.error.message} if job.error.code else None
        if state == "JOB_STATE_CANCELLED":
            return RemoteStatus(RemoteState.CANCELLED, state, error=error)
        # FAILED, and EXPIRED or PARTIALLY_SUCCEEDED, which a custom job should never reach.
        return RemoteStatus(RemoteState.FAILED, state, error=self._failure(run, state, error))

    def cancel(self, run: RemoteRun) -> None:
        name = run.remote.get("customJobName")
        if not name:
            return  # never created: the queue job's own cancel covers it
        try:
            self.clients.job.cancel_custom_job(name=name)
        except (google_exceptions.GoogleAPICallError, google_exceptions.RetryError) as exc:
            if _failed_precondition(exc):
                # Already finished: the next poll reads its terminal state.
                log.info("training.vertex_custom.cancel_too_late", extra={"custom_job": name})
                return
            raise remote_error(exc, doing="Vertex AI CancelCustomJob") from exc

    def _job_name(self, run: RemoteRun) -> str:
        name = run.remote.get("customJobName")
        if not name:
            raise RemoteCallPermanent(
                "the vertex-custom job has no CustomJob: it was never submitted", code=9
            )
        return str(name)

    def _output(self, run: RemoteRun) -> GcsBlobStore:
        return self._store(run.remote.get("outputUri") or self.output_uri(run.training_job_id))

    def _read_json(self, run: RemoteRun, name: str) -> dict[str, Any] | None:
        """A small JSON file of the job's output, or None when absent or unreadable."""
        try:
            value = json.loads(self._output(run).get(name))
        except Exception:
            # Progress and the trainer's refusal are extras: the job's state decides.
            log.debug("training.vertex_custom.unread", extra={"file": name}, exc_info=True)
            return None
        return value if isinstance(value, dict) else None

    def _progress(self, run: RemoteRun) -> dict[str, Any] | None:
        raw = self._read_json(run, remote_trainer.PROGRESS_FILE)
        return None if raw is None else progress_of(raw)

    def _failure(self, run: RemoteRun, state: str, error: dict[str, Any] | None) -> dict[str, Any]:
        """Vertex's error, with the trainer's own message when it refused its input (Vertex
        only says which exit status the container had)."""
        refusal = self._read_json(run, remote_trainer.ERROR_FILE)
        vertex_message = (error or {}).get("message") or f"the custom job ended as {state}"
        if refusal and refusal.get("message"):
            return {
                "code": int(refusal.get("code") or 3),
                "message": f"{refusal['message']} ({vertex_message})",
            }
        return {"code": (error or {}).get("code") or 2, "message": vertex_message}

    # -- collect ---------------------------------------------------------------------------

    def collect(self, run: RemoteRun) -> Collected:
        """The trained model file, checked against its result, and the run's facts."""
        output = self._output(run)
        try:
            result = json.loads(output.get(remote_trainer.RESULT_FILE))
            run.checkpoint()
            weights = output.get(remote_trainer.MODEL_FILE)
        except BlobNotFound as exc:
            raise RemoteCallPermanent(
                f"the custom job succeeded but {output.uri(exc.key)} is missing", code=5
            ) from None
        except google_exceptions.GoogleAPICallError as exc:
            raise remote_error(exc, doing="Cloud Storage read of the custom job's output") from exc
        problem = _result_problem(run, result, weights)
        if problem:
            raise RemoteCallPermanent(f"the custom job's output is wrong: {problem}", code=13)
        elapsed = float(result["elapsedSeconds"])
        progress = self._read_json(run, remote_trainer.PROGRESS_FILE)
        return Collected(
            weights=weights,
            cost_milli_node_hours=min(run.budget_milli_node_hours, _cost(elapsed)),
            successful_stop_reason=result["stopReason"],
            progress=None if progress is None else progress_of(progress),
            details={
                "customJobName": run.remote.get("customJobName"),
                "outputUri": output.url,
                "epochs": result.get("epochs"),
                "steps": result.get("steps"),
                "resumedAtEpoch": result.get("resumedAtEpoch"),
                "elapsedSeconds": elapsed,
                "bestValidationMeanAveragePrecision": result.get(
                    "bestValidationMeanAveragePrecision"
                ),
                "imagesPerSecond": result.get("imagesPerSecond"),
            },
        )


def _failed_precondition(exc: BaseException) -> bool:
    """FAILED_PRECONDITION over either transport: over REST api_core raises by HTTP status
    (400, shared with INVALID_ARGUMENT), and only the body names the canonical code."""
    if isinstance(exc, google_exceptions.FailedPrecondition):
        return True
    response = getattr(exc, "response", None)
    if not isinstance(exc, google_exceptions.BadRequest) or response is None:
        return False
    try:
        return bool(response.json()["error"]["status"] == "FAILED_PRECONDITION")
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def _result_problem(run: RemoteRun, result: dict[str, Any], weights: bytes) -> str | None:
    if result.get("format") != remote_trainer.RESULT_FORMAT:
        return f"result.json's format is {result.get('format')!r}"
    digest = hashlib.sha256(weights).hexdigest()
    if digest != result.get("modelSha256"):
        return f"model.pt's sha256 is {digest}, result.json says {result.get('modelSha256')}"
    if tuple(result.get("labels") or ()) != tuple(run.labels):
        return f"the model has labels {result.get('labels')}, the job {list(run.labels)}"
    return None


def _cost(elapsed_seconds: float) -> int:
    return math.ceil(round(elapsed_seconds / SECONDS_PER_MILLI_NODE_HOUR, 6))


def progress_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The trainer's progress.json (seconds) as the training job's progress (milli node hours)."""

    def mnh(seconds: Any) -> float:
        return round(float(seconds or 0.0) / SECONDS_PER_MILLI_NODE_HOUR, 3)

    return {
        "epoch": int(raw.get("epoch", 0)),
        "fraction": float(raw.get("fraction", 0.0)),
        "elapsedMilliNodeHours": mnh(raw.get("elapsedSeconds")),
        "remainingMilliNodeHours": mnh(raw.get("remainingSeconds")),
        "losses": {str(k): float(v) for k, v in (raw.get("losses") or {}).items()},
        "validationMeanAveragePrecision": raw.get("validationMeanAveragePrecision"),
        "bestValidationMeanAveragePrecision": raw.get("bestValidationMeanAveragePrecision"),
        "imagesPerSecond": float(raw.get("imagesPerSecond", 0.0)),
    }


def staged_keys(snapshot: dict[str, Any]) -> Iterator[str]:
    """Every blob key a snapshot names (its images and the base model's weights)."""
    for image in snapshot["images"]:
        yield image["blobKey"]
    base = snapshot.get("baseModel")
    if base and base.get("weightsBlobKey"):
        yield base["weightsBlobKey"]

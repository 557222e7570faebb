"""The interface every training backend implements, and what its calls carry.

A backend turns a training job into remote work and back: ``submit`` creates the remote
resources (saving each name on the job row as soon as it exists, so that a retried submit
reuses it), ``poll`` reports where the remote work stands, ``cancel`` asks it to stop, and
``collect`` fetches what a successful run made. The training tasks own everything around
these calls: the job's states, the poller's schedule, the registry rows.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import requests
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions

from app.config import Settings
from app.errors import AppError
from app.kit.blobs import BlobStore

if TYPE_CHECKING:
    from app.jobs.context import JobContext


class RemoteState(enum.StrEnum):
    """Where a remote run stands, in the training job's words."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class RemoteStatus:
    state: RemoteState
    # The backend's own word for it (PIPELINE_STATE_RUNNING, JOB_STATE_SUCCEEDED, ...).
    remote_state: str | None = None
    # google.rpc.Status-like {code, message} of a FAILED (or CANCELLED) run.
    error: dict[str, Any] | None = None
    # Shown as the training job's progress (TrainingProgress's camelCase fields) when set.
    progress: dict[str, Any] | None = None


@dataclass
class RemoteRun:
    """One training job as a backend sees it: its settings, the names it saved, where to
    write. ``save_remote`` commits names at once (its own short transaction)."""

    training_job_id: str
    display_name: str
    dataset_id: str
    model_type: str
    budget_milli_node_hours: int
    disable_early_stopping: bool
    seed: int
    labels: tuple[str, ...]
    snapshot_blob_key: str
    remote: dict[str, Any]
    settings: Settings
    blobs: BlobStore
    _save: Callable[[dict[str, Any]], None] = field(repr=False)
    # The queue job's context where a worker runs the step (submit and collect), else None.
    ctx: JobContext | None = field(default=None, repr=False)
    # Set by a backend whose submit did all the work (local): the job's result.
    finished: dict[str, Any] | None = None
    _snapshot: dict[str, Any] | None = field(default=None, repr=False)

    def save_remote(self, **names: Any) -> None:
        """Record resource names (and small facts) on the job row now, committed."""
        self._save(names)
        self.remote.update(names)

    def snapshot(self) -> dict[str, Any]:
        """The frozen dataset (labels, images with splits and boxes), read once."""
        if self._snapshot is None:
            self._snapshot = json.loads(self.blobs.get(self.snapshot_blob_key))
        return self._snapshot

    @property
    def base_model(self) -> dict[str, Any] | None:
        """The model training starts from, as the snapshot froze it: {"id", "version",
        "weightsBlobKey", "sha256", "format", "remoteModelName"}; None for a fresh start."""
        found: dict[str, Any] | None = self.snapshot().get("baseModel")
        return found

    def checkpoint(self) -> None:
        """Stop here if the worker's job was cancelled or reclaimed (no-op in the poller)."""
        if self.ctx is not None:
            self.ctx.checkpoint()


@dataclass(frozen=True)
class Collected:
    """What a successful remote run made, fetched by ``collect`` (no database writes).

    Either ``weights`` (a PyTorch bundle from this project's trainer, vertex-custom: the
    service evaluates it on TEST and registers it as a local job's model) or ``tflite`` with
    ``evaluation`` (vertex-automl: Vertex's metrics mapped to §3.3, registered as a TFLite
    version of a model whose source is ``vertex``).
    """

    weights: bytes | None = None
    tflite: bytes | None = None
    # {"boundingBoxMeanAveragePrecision", "evaluatedBoundingBoxCount", "boundingBoxMetrics",
    #  "slices": [{"label", "metrics": {...}}], ...} as the evaluation resource stores them.
    evaluation: dict[str, Any] | None = None
    # The remote model the file came from (projects/P/locations/L/models/ID).
    remote_model_name: str | None = None
    cost_milli_node_hours: int | None = None
    successful_stop_reason: str | None = None
    # The final progress to show (TrainingProgress fields), if the backend knows it.
    progress: dict[str, Any] | None = None
    # Extra facts for the queue job's result (epochs, elapsed seconds, ...).
    details: dict[str, Any] = field(default_factory=dict)


class TrainingBackend(Protocol):
    name: str

    def submit(self, run: RemoteRun) -> None:
        """Create the remote resources, saving their names with ``run.save_remote``."""
        ...

    def poll(self, run: RemoteRun) -> RemoteStatus:
        """Where the remote run stands now; may start the next remote step (idempotently)."""
        ...

    def cancel(self, run: RemoteRun) -> None:
        """Ask the remote run to stop; the poller then waits for its terminal state."""
        ...

    def collect(self, run: RemoteRun) -> Collected:
        """Fetch what a successful run made (slow work, outside any transaction)."""
        ...


# -- errors ------------------------------------------------------------------------------

# google.rpc.Code numbers and names (what Vertex stores in an operation's or job's error).
RPC_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
_HTTP_TO_RPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 500: 13, 501: 12, 503: 14, 504: 4}
# Retried with backoff: the service is busy or away, the call may well work later. (The
# codes api_core itself retries, plus rate limits and deadlines.)
_TRANSIENT_RPC = {4, 8, 10, 13, 14}
_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
_CONNECTION_ERRORS = (
    ConnectionError,
    TimeoutError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    auth_exceptions.TransportError,
    google_exceptions.RetryError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed remote call is worth retrying later (UNAVAILABLE, DEADLINE_EXCEEDED,
    RESOURCE_EXHAUSTED/429, INTERNAL/500/503, connection errors) rather than final
    (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, FAILED_PRECONDITION, ...)."""
    if isinstance(exc, RemoteCallFailed):
        return exc.transient
    if isinstance(exc, google_exceptions.GoogleAPICallError):
        grpc_code = exc.grpc_status_code
        if grpc_code is not None:
            return int(grpc_code.value[0]) in _TRANSIENT_RPC
        return exc.code in _TRANSIENT_HTTP
    return isinstance(exc, _CONNECTION_ERRORS)


def rpc_status(exc: BaseException) -> dict[str, Any]:
    """A failed remote call as a google.rpc.Status-like dict {code, status, message}."""
    if isinstance(exc, RemoteCallFailed):
        return exc.to_rpc_status()
    code = 14 if isinstance(exc, _CONNECTION_ERRORS) else 2
    message = str(exc)
    if isinstance(exc, google_exceptions.GoogleAPICallError):
        grpc_code = exc.grpc_status_code
        if grpc_code is not None:
            code = int(grpc_code.value[0])
        elif exc.code is not None:
            code = _HTTP_TO_RPC.get(exc.code, 13 if exc.code >= 500 else 2)
        message = exc.message or message
    return {"code": code, "status": RPC_CODE_NAMES.get(code, "UNKNOWN"), "message": message}


def status_of(error: dict[str, Any] | None, *, default_code: int = 2) -> dict[str, Any]:
    """A remote run's own error ({code, message}) with its status name, for the queue job."""
    error = error or {}
    code = int(error.get("code") or default_code)
    return {
        "code": code,
        "status": RPC_CODE_NAMES.get(code, "UNKNOWN"),
        "message": str(error.get("message") or "the remote run failed without a message"),
    }


class RemoteCallFailed(AppError):
    """A remote call failed: it carries the remote code and message to the queue job.

    The worker retries an AppError of status 5xx and fails the job on a 4xx, so the two
    subclasses below say which; ``remote_error`` picks one with ``is_transient``.
    """

    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code

    def to_rpc_status(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "status": RPC_CODE_NAMES.get(self.code, "UNKNOWN"),
            "message": self.message,
        }


class RemoteCallTransient(RemoteCallFailed):
    status_code = 503
    status = "UNAVAILABLE"
    transient = True


class RemoteCallPermanent(RemoteCallFailed):
    status_code = 400
    status = "FAILED_PRECONDITION"


def remote_error(exc: BaseException, *, doing: str) -> RemoteCallFailed:
    """``exc`` (a google.api_core error, a connection error) as the error a worker records,
    its message saying what was being done: "Vertex AI CreateDataset: 403 ..." ."""
    status = rpc_status(exc)
    cls = RemoteCallTransient if is_transient(exc) else RemoteCallPermanent
    return cls(f"{doing}: {status['message']}", code=status["code"])

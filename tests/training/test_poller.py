"""The remote state machine with a scripted backend: hand-off to the remote lease, the
poller's outcomes, backoff, cancellation, the periodic job, one poll per due slot."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from google.api_core import exceptions as google_exceptions
from sqlalchemy import func, select

from app.config import Settings, load_settings
from app.db.job import Job
from app.db.model import Model
from app.db.training_job import TrainingJob
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs_service
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.kit.clock import utcnow
from app.training import backends
from app.training import service as training_service
from app.training.backends.base import (
    Collected,
    RemoteRun,
    RemoteState,
    RemoteStatus,
    TrainingBackend,
)
from app.training.poller import Poller
from tests.training.conftest import start_training


class ScriptedBackend:
    """A backend whose remote side is a script: the statuses (the last repeats) and errors
    successive polls give, what collect returns; it counts the calls."""

    name = "vertex-automl"

    def __init__(self) -> None:
        self.statuses: list[RemoteStatus] = [running()]
        self.errors: list[Exception] = []
        self.collected: Collected | None = None
        self.calls: list[str] = []

    def submit(self, run: RemoteRun) -> None:
        self.calls.append("submit")
        run.save_remote(thingName=f"things/{run.training_job_id}")

    def poll(self, run: RemoteRun) -> RemoteStatus:
        self.calls.append("poll")
        if self.errors:
            raise self.errors.pop(0)
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def cancel(self, run: RemoteRun) -> None:
        self.calls.append("cancel")

    def collect(self, run: RemoteRun) -> Collected:
        self.calls.append("collect")
        assert self.collected is not None
        return self.collected


def running(state: str = "PIPELINE_STATE_RUNNING") -> RemoteStatus:
    return RemoteStatus(state=RemoteState.RUNNING, remote_state=state)


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return load_settings(
        database_url=database_url,
        blob_url=f"file://{tmp_path / 'blobs'}",
        job_heartbeat_seconds=0.2,
        job_stall_timeout_seconds=1.0,
        job_retry_backoff_seconds=0.0,
        worker_poll_seconds=0.05,
        log_format="text",
        # Configured, so the API accepts the backend; the scripted one never calls out.
        vertex_project="test-project",
        vertex_staging_bucket="gs://staging",
        remote_poll_seconds=0.05,
        remote_poll_max_backoff_seconds=0.3,
    )


@pytest.fixture
def backend(monkeypatch) -> ScriptedBackend:
    scripted = ScriptedBackend()
    factory: Any = lambda settings: scripted  # noqa: E731
    monkeypatch.setitem(backends.FACTORIES, "vertex-automl", factory)
    _: TrainingBackend = scripted
    return scripted


@pytest.fixture
def worker(settings, session_factory) -> Worker:
    return Worker(settings=settings, session_factory=session_factory, registry=default_registry())


@pytest.fixture
def poller(settings, session_factory, worker) -> Poller:
    return Poller(settings=settings, blobs=worker.blobs, session_factory=session_factory)


@pytest.fixture
def remote_job(client, make_dataset, backend, worker) -> dict[str, Any]:
    """A vertex-automl job submitted and handed to the poller."""
    job = start_training(client, make_dataset(), backend="vertex-automl")
    assert worker.run_once()
    return job


def rows(session_factory, training_job_id: str) -> tuple[TrainingJob, Job]:
    with session_factory() as session:
        found = jobs_repository.get_with_job(session, TrainingJob, training_job_id)
        assert found is not None
        return found


def poll_when_due(poller: Poller, training_job_id: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not poller.poll_one(training_job_id):
        assert time.monotonic() < deadline, "the job's poll never came due"
        time.sleep(0.01)


def test_a_submitted_job_is_held_remotely_without_a_worker(
    client, remote_job, backend, session_factory, worker
):
    row, job = rows(session_factory, remote_job["id"])
    assert backend.calls == ["submit"]
    assert (job.state, job.lease_owner, job.heartbeat_at) == ("RUNNING", "remote", None)
    assert row.phase == "REMOTE"
    assert row.remote == {"thingName": f"things/{remote_job['id']}"}
    # No heartbeat comes, and the stalled-job reclaimer leaves it alone.
    time.sleep(1.1)
    assert worker.reclaim_stalled() == 0
    assert worker.run_once() is False
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["state"] == "RUNNING"
    assert body["backend"] == "vertex-automl"
    assert body["remoteResources"] == {"thingName": f"things/{remote_job['id']}"}


def test_transient_errors_back_off_and_a_good_poll_resets_them(
    client, remote_job, backend, poller, session_factory, settings
):
    backend.errors = [
        google_exceptions.ServiceUnavailable("busy"),
        google_exceptions.DeadlineExceeded("slow"),
        ConnectionError("refused"),
        google_exceptions.TooManyRequests("quota"),
    ]
    delays = []
    for code in (14, 4, 14, 8):
        poll_when_due(poller, remote_job["id"])
        polled = utcnow()
        row, job = rows(session_factory, remote_job["id"])
        assert job.state == "RUNNING"
        assert row.last_poll_error is not None and row.last_poll_error["code"] == code
        assert row.next_poll_at is not None
        delays.append((row.next_poll_at - polled).total_seconds())
    assert delays == pytest.approx([0.1, 0.2, 0.3, 0.3], abs=0.04)  # doubling, capped
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["lastPollError"]["status"] == "RESOURCE_EXHAUSTED"

    poll_when_due(poller, remote_job["id"])
    row, _ = rows(session_factory, remote_job["id"])
    assert (row.poll_failures, row.last_poll_error) == (0, None)
    assert row.remote_state == "PIPELINE_STATE_RUNNING"
    assert row.next_poll_at is not None
    assert row.next_poll_at - utcnow() <= timedelta(seconds=settings.remote_poll_seconds)


def test_a_permanent_error_fails_the_job_with_the_remote_message(
    client, remote_job, backend, poller
):
    backend.errors = [google_exceptions.PermissionDenied("caller lacks aiplatform.get")]
    poll_when_due(poller, remote_job["id"])
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["state"] == "FAILED"
    assert body["error"]["code"] == 7
    assert body["error"]["message"] == "caller lacks aiplatform.get"
    # Finished once: a later poll finds nothing due.
    assert poller.poll_one(remote_job["id"]) is False


def test_a_remote_failure_carries_the_remote_error(client, remote_job, backend, poller):
    backend.statuses = [
        RemoteStatus(
            state=RemoteState.FAILED,
            remote_state="PIPELINE_STATE_FAILED",
            error={"code": 3, "message": "the dataset has too few images"},
        )
    ]
    poll_when_due(poller, remote_job["id"])
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["state"] == "FAILED"
    assert body["error"] == {
        "code": 3,
        "status": "INVALID_ARGUMENT",
        "message": "the dataset has too few images",
        "details": None,
    }
    assert body["remoteState"] == "PIPELINE_STATE_FAILED"


def test_cancel_is_sent_once_and_the_job_ends_with_the_remote_run(
    client, remote_job, backend, poller
):
    assert client.post(f"/v1/trainingJobs/{remote_job['id']}:cancel").json()["state"] == (
        "CANCELLING"
    )
    poll_when_due(poller, remote_job["id"])
    poll_when_due(poller, remote_job["id"])
    assert backend.calls.count("cancel") == 1
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["state"] == "CANCELLING"
    assert body["remoteResources"]["cancelRequested"] is True
    backend.statuses = [
        RemoteStatus(state=RemoteState.CANCELLED, remote_state="PIPELINE_STATE_CANCELLED")
    ]
    poll_when_due(poller, remote_job["id"])
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["state"] == "CANCELLED"
    assert body["error"]["code"] == 1


def test_a_run_that_succeeds_while_cancelling_registers_nothing(
    client, remote_job, backend, poller, session_factory
):
    client.post(f"/v1/trainingJobs/{remote_job['id']}:cancel")
    backend.statuses = [
        RemoteStatus(state=RemoteState.SUCCEEDED, remote_state="PIPELINE_STATE_SUCCEEDED")
    ]
    poll_when_due(poller, remote_job["id"])
    row, job = rows(session_factory, remote_job["id"])
    assert job.state == "CANCELLED"
    assert row.phase == "REMOTE"  # never handed back for collecting
    assert "collect" not in backend.calls


def test_a_crashing_poll_is_retried_and_shown(client, remote_job, backend, poller):
    backend.errors = [KeyError("pipelineName")]
    poll_when_due(poller, remote_job["id"])
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["state"] == "RUNNING"
    assert "pipelineName" in body["lastPollError"]["message"]


def test_success_hands_the_job_back_for_a_worker_to_collect(
    client, remote_job, backend, poller, session_factory, worker, float_tflite
):
    backend.statuses = [
        RemoteStatus(state=RemoteState.SUCCEEDED, remote_state="PIPELINE_STATE_SUCCEEDED")
    ]
    poll_when_due(poller, remote_job["id"])
    row, job = rows(session_factory, remote_job["id"])
    assert (job.state, job.lease_owner, job.attempts) == ("QUEUED", None, 0)
    assert row.phase == "COLLECTING"
    # A second poll of the same job finds nothing to do: it is no longer remote.
    assert poller.poll_one(remote_job["id"]) is False

    # The export's labels (red, green, blue) are not the job's (circle, square): refused.
    backend.collected = Collected(tflite=float_tflite, remote_model_name="models/1")
    assert worker.run_once()
    body = client.get(f"/v1/trainingJobs/{remote_job['id']}").json()
    assert body["state"] == "FAILED"
    assert body["error"]["status"] == "FAILED_PRECONDITION"
    assert "labels differ" in body["error"]["message"]
    assert body["attempts"] == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Model)) == 0


def test_one_poll_per_due_slot(remote_job, backend, settings, session_factory, worker):
    first, second = (
        Poller(settings=settings, blobs=worker.blobs, session_factory=session_factory)
        for _ in range(2)
    )
    poll_when_due(first, remote_job["id"])
    assert second.poll_one(remote_job["id"]) is False
    assert backend.calls.count("poll") == 1


def test_the_periodic_poller_is_queued_only_while_a_job_is_remote(
    client, make_dataset, backend, worker, settings, session_factory
):
    (periodic,) = [p for p in default_registry().periodic if p.kind == "training.poll_remote"]
    every = periodic.interval(settings)
    assert every == timedelta(seconds=settings.remote_poll_seconds)

    def enqueue() -> bool:
        with session_factory.begin() as session:
            return jobs_service.enqueue_periodic(
                session, periodic=periodic, max_attempts=1, every=every
            )

    assert enqueue() is False  # nothing remote: no row
    start_training(client, make_dataset(), backend="vertex-automl")
    assert worker.run_once()
    assert enqueue() is True
    assert enqueue() is False  # one is queued already
    assert worker.run_once()  # the poll job itself
    assert "poll" in backend.calls


def test_a_local_job_is_never_handed_off(client, make_dataset, settings, session_factory):
    job = start_training(client, make_dataset())
    assert job["backend"] == "local"
    assert job["remoteResources"] is None
    with session_factory() as session:
        row = session.get(TrainingJob, job["id"])
        assert row is not None and row.phase is None
    assert training_service.POLL_KIND == "training.poll_remote"

"""The vertex-custom backend over the wire: the real aiplatform_v1 JobServiceClient (REST)
against the Vertex AI stand-in, Cloud Storage through the emulator, and the stand-in running
the CustomJob's own command line (``edge-automl train-job``) as a local process."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import build_parser
from app.config import Settings, load_settings
from app.detector.bundle import load_bundle
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.kit.blobs import BlobStore, open_blob_store
from app.training.backends.base import (
    RemoteCallPermanent,
    RemoteCallTransient,
    RemoteRun,
    RemoteState,
    RemoteStatus,
    is_transient,
)
from app.training.backends.vertex_custom import VertexCustomBackend
from tests.fixtures.vertex import FakeVertex
from tests.training.conftest import make_scene, read_snapshot, start_training
from tests.training.test_train_job_command import JOB_ID, LABELS, write_snapshot

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy" / "vertex-custom"
IMAGE = "us-central1-docker.pkg.dev/test-project/edge-automl/edge-automl:1.0"
JOB_ACCOUNT = "edge-automl-trainer@test-project.iam.gserviceaccount.com"
RUN_TIMEOUT_S = 240


@pytest.fixture
def vertex_settings(vertex: FakeVertex, gcs_bucket: str, tmp_path: Path) -> Settings:
    """The service configured for the stand-in; one epoch, so the trainer runs seconds.
    (These tests call the backend directly: no database.)"""
    return load_settings(
        database_url="sqlite://",
        blob_url=f"file://{tmp_path / 'blobs'}",
        **{
            "vertex_project": vertex.project,
            "vertex_location": vertex.location,
            "vertex_staging_bucket": f"gs://{gcs_bucket}/staging",
            "vertex_api_endpoint": vertex.endpoint,
            "vertex_api_transport": "rest",
            "vertex_service_account": JOB_ACCOUNT,
            "vertex_custom_image": IMAGE,
            "vertex_custom_machine_type": "n1-standard-4",
            "training_max_epochs": 1,
            "remote_poll_seconds": 0.2,
        },
    )


@pytest.fixture
def run_command(vertex: FakeVertex, gcs_emulator: str) -> FakeVertex:
    """The stand-in runs a CustomJob's container command here, ``python -m app`` standing in
    for the image's ``edge-automl``."""
    vertex.command_prefix = [sys.executable, "-m", "app"]
    vertex.command_env = {"STORAGE_EMULATOR_HOST": gcs_emulator, "PYTHONPATH": str(REPO_ROOT)}
    vertex.script_custom_job(run_command=True)
    return vertex


def make_run(settings: Settings, blobs: BlobStore, **fields: Any) -> RemoteRun:
    """A training job as the service hands it to a backend, its saved names in ``run.remote``."""
    key = write_snapshot(blobs, fields.pop("splits", None))
    return RemoteRun(
        training_job_id=JOB_ID,
        display_name="shapes detector",
        dataset_id="ds1",
        model_type=fields.pop("model_type", "MOBILE_TF_LOW_LATENCY_1"),
        budget_milli_node_hours=fields.pop("budget_milli_node_hours", 50),
        disable_early_stopping=False,
        seed=fields.pop("seed", 7),
        labels=tuple(LABELS),
        snapshot_blob_key=key,
        remote={},
        settings=settings,
        blobs=blobs,
        _save=lambda names: None,
        **fields,
    )


def wait_until_done(backend: VertexCustomBackend, run: RemoteRun) -> list[RemoteStatus]:
    """Poll as the poller does until the job is terminal; every status seen."""
    seen = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = backend.poll(run)
        seen.append(status)
        if status.state != RemoteState.RUNNING:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the custom job is still running: {seen[-1]}")


def staged(gcs_client, bucket: str) -> list[str]:
    return sorted(b.name for b in gcs_client.list_blobs(bucket, prefix="staging/"))


# -- submit ------------------------------------------------------------------------------


def test_submit_stages_local_data_and_creates_one_custom_job(
    vertex, vertex_settings, gcs_client, gcs_bucket, tmp_path
):
    vertex.script_custom_job(["PENDING"])
    blobs = open_blob_store(f"file://{tmp_path / 'service'}")
    run = make_run(vertex_settings, blobs)
    backend = VertexCustomBackend(vertex_settings)

    backend.submit(run)

    [(name, job)] = vertex.custom_jobs.items()
    folder = f"gs://{gcs_bucket}/staging/edge-automl/{JOB_ID}"
    assert run.remote == {
        "outputUri": f"{folder}/output",
        "snapshotUri": f"{folder}/data/training/{JOB_ID}/snapshot.json",
        "imagesUri": f"{folder}/data",
        "customJobName": name,
    }
    # The local images and the snapshot, copied once into the staging bucket.
    data = f"staging/edge-automl/{JOB_ID}/data/"
    images = sorted(f"{data}{info.key}" for info in blobs.list("datasets/"))
    assert len(images) == 10
    assert staged(gcs_client, gcs_bucket) == sorted(
        [*images, f"{data}training/{JOB_ID}/snapshot.json"]
    )

    spec = job.job_spec
    assert job.display_name == "edge-automl shapes detector"
    assert job.labels == {"edge-automl-training-job": JOB_ID}
    assert spec.service_account == JOB_ACCOUNT
    assert spec.base_output_directory.output_uri_prefix == f"{folder}/output"
    assert spec.scheduling.timeout.total_seconds() == 50 * 3.6 * 1.5 + 3600
    [pool] = spec.worker_pool_specs
    assert pool.replica_count == 1
    assert pool.machine_spec.machine_type == "n1-standard-4"
    assert pool.machine_spec.accelerator_count == 0
    container = pool.container_spec
    assert container.image_uri == IMAGE and list(container.command) == ["edge-automl"]
    # Read-checked: the arguments are ones the image's own CLI accepts, meaning what we mean.
    args = build_parser().parse_args(list(container.args))
    assert args.handler.__name__ == "cmd_train_job"
    assert (args.snapshot, args.images_from, args.output) == (
        run.remote["snapshotUri"],
        run.remote["imagesUri"],
        run.remote["outputUri"],
    )
    assert (args.model_type, args.budget_milli_node_hours, args.seed) == (
        "MOBILE_TF_LOW_LATENCY_1",
        50,
        7,
    )
    assert not args.disable_early_stopping and args.max_epochs == 1
    assert args.progress_seconds == 1.0, "not more than one write a second to one object"

    # A retried submit (the worker died after CreateCustomJob was saved) creates nothing.
    creates = [r for r in vertex.requests if r[0] == "CreateCustomJob"]
    backend.submit(run)
    assert [r for r in vertex.requests if r[0] == "CreateCustomJob"] == creates
    assert len(vertex.custom_jobs) == 1


def test_a_retried_submit_copies_only_what_is_missing(
    vertex, vertex_settings, gcs_client, gcs_bucket, tmp_path
):
    vertex.script_custom_job(["PENDING"])
    blobs = open_blob_store(f"file://{tmp_path / 'service'}")
    run = make_run(vertex_settings, blobs)
    backend = VertexCustomBackend(vertex_settings)
    # The first attempt died while copying: two images made it, the snapshot did not.
    data = open_blob_store(f"gs://{gcs_bucket}/staging/edge-automl/{JOB_ID}/data")
    for key in ("datasets/ds1/images/0.jpg", "datasets/ds1/images/1.jpg"):
        data.put(key, b"already here")
    vertex.fail_next("CreateCustomJob", code=503)

    with pytest.raises(RemoteCallTransient) as failed:
        backend.submit(run)
    assert is_transient(failed.value) and "Vertex AI CreateCustomJob" in str(failed.value)
    assert data.get("datasets/ds1/images/0.jpg") == b"already here", "not copied again"
    assert data.get("datasets/ds1/images/2.jpg") == blobs.get("datasets/ds1/images/2.jpg")
    assert "customJobName" not in run.remote and not vertex.custom_jobs

    backend.submit(run)
    assert len(vertex.custom_jobs) == 1 and run.remote["customJobName"] in vertex.custom_jobs


def test_submit_reads_cloud_storage_data_in_place(vertex, vertex_settings, gcs_client, gcs_bucket):
    vertex.script_custom_job(["PENDING"])
    blobs = open_blob_store(f"gs://{gcs_bucket}/service")
    settings = vertex_settings.model_copy(
        update={
            "vertex_custom_accelerator_type": "NVIDIA_TESLA_T4",
            "vertex_custom_accelerator_count": 2,
            "vertex_service_account": None,
        }
    )
    run = make_run(settings, blobs)

    VertexCustomBackend(settings).submit(run)

    assert run.remote["imagesUri"] == f"gs://{gcs_bucket}/service"
    assert run.remote["snapshotUri"] == f"gs://{gcs_bucket}/service/training/{JOB_ID}/snapshot.json"
    assert staged(gcs_client, gcs_bucket) == [], "nothing copied"
    [job] = vertex.custom_jobs.values()
    machine = job.job_spec.worker_pool_specs[0].machine_spec
    assert (machine.accelerator_type.name, machine.accelerator_count) == ("NVIDIA_TESLA_T4", 2)
    assert job.job_spec.service_account == "", "Vertex's default account"


# -- the job runs: poll, collect ---------------------------------------------------------


def test_the_custom_job_trains_and_its_checked_model_is_collected(
    run_command, vertex_settings, tmp_path
):
    blobs = open_blob_store(f"file://{tmp_path / 'service'}")
    run = make_run(vertex_settings, blobs)
    backend = VertexCustomBackend(vertex_settings)

    backend.submit(run)
    seen = wait_until_done(backend, run)

    assert seen[0].state == RemoteState.RUNNING and seen[0].remote_state == "JOB_STATE_RUNNING"
    last = seen[-1]
    assert (last.state, last.remote_state, last.error) == (
        RemoteState.SUCCEEDED,
        "JOB_STATE_SUCCEEDED",
        None,
    )
    assert last.progress is not None and last.progress["epoch"] == 1
    assert last.progress["fraction"] == 1.0 and last.progress["elapsedMilliNodeHours"] > 0

    collected = backend.collect(run)

    assert collected.weights is not None and collected.tflite is None
    result = json.loads(open_blob_store(run.remote["outputUri"]).get("result.json"))
    assert hashlib.sha256(collected.weights).hexdigest() == result["modelSha256"]
    assert load_bundle(collected.weights).labels == tuple(LABELS)
    assert collected.successful_stop_reason == "MODEL_CONVERGED", "the epoch cap ended it"
    assert 1 <= collected.cost_milli_node_hours <= 50
    assert collected.details["epochs"] == 1
    assert collected.details["customJobName"] == run.remote["customJobName"]
    assert collected.progress == last.progress

    # A model file that is not the one the trainer wrote, or no result at all, is refused.
    output = open_blob_store(run.remote["outputUri"])
    output.put("model.pt", output.get("model.pt") + b"x")
    with pytest.raises(RemoteCallPermanent, match=r"model\.pt's sha256 is"):
        backend.collect(run)
    output.delete("result.json")
    with pytest.raises(RemoteCallPermanent, match=r"result\.json is missing"):
        backend.collect(run)


def test_a_refused_command_fails_the_job_with_the_trainers_message(
    run_command, vertex_settings, tmp_path
):
    blobs = open_blob_store(f"file://{tmp_path / 'service'}")
    run = make_run(vertex_settings, blobs, model_type="MOBILE_TF_HUGE_1")
    backend = VertexCustomBackend(vertex_settings)

    backend.submit(run)
    last = wait_until_done(backend, run)[-1]

    assert (last.state, last.remote_state) == (RemoteState.FAILED, "JOB_STATE_FAILED")
    assert last.error is not None and last.error["code"] == 3
    assert last.error["message"].startswith("--model-type: unknown model type 'MOBILE_TF_HUGE_1'")
    assert "exited with a non-zero status of 2" in last.error["message"]


# -- scripted remote states --------------------------------------------------------------


def submitted(
    vertex: FakeVertex, settings: Settings, tmp_path: Path, states: list[str], **script: Any
) -> tuple[VertexCustomBackend, RemoteRun]:
    vertex.script_custom_job(states, **script)
    run = make_run(settings, open_blob_store(f"file://{tmp_path / 'service'}"), splits={"TRAIN": 1})
    backend = VertexCustomBackend(settings)
    backend.submit(run)
    return backend, run


def states_seen(backend: VertexCustomBackend, run: RemoteRun, polls: int) -> list[Any]:
    return [(s.state, s.remote_state) for s in (backend.poll(run) for _ in range(polls))]


def test_vertex_states_map_to_the_training_jobs(vertex, vertex_settings, tmp_path):
    backend, run = submitted(
        vertex,
        vertex_settings,
        tmp_path,
        ["QUEUED", "PENDING", "RUNNING", "FAILED"],
        error={"code": 8, "message": "Quota exceeded for NVIDIA_TESLA_T4"},
    )

    assert states_seen(backend, run, 3) == [
        (RemoteState.RUNNING, "JOB_STATE_QUEUED"),
        (RemoteState.RUNNING, "JOB_STATE_PENDING"),
        (RemoteState.RUNNING, "JOB_STATE_RUNNING"),
    ]
    failed = backend.poll(run)
    assert (failed.state, failed.remote_state) == (RemoteState.FAILED, "JOB_STATE_FAILED")
    assert failed.error == {"code": 8, "message": "Quota exceeded for NVIDIA_TESLA_T4"}


def test_cancel_asks_vertex_and_the_job_ends_cancelled(vertex, vertex_settings, tmp_path):
    backend, run = submitted(vertex, vertex_settings, tmp_path, ["PENDING", "RUNNING"])
    assert backend.poll(run).state == RemoteState.RUNNING

    backend.cancel(run)

    cancels = [r for r in vertex.requests if r[0] == "CancelCustomJob"]
    assert [r[1] for r in cancels] == [run.remote["customJobName"]]
    status = backend.poll(run)
    assert (status.state, status.remote_state) == (RemoteState.CANCELLED, "JOB_STATE_CANCELLED")
    # Cancelling again once it is over is not an error: Vertex says FAILED_PRECONDITION.
    backend.cancel(run)
    assert backend.poll(run).state == RemoteState.CANCELLED


def test_cancel_before_any_custom_job_exists_does_nothing(vertex, vertex_settings, tmp_path):
    run = make_run(vertex_settings, open_blob_store(f"file://{tmp_path / 'service'}"))
    VertexCustomBackend(vertex_settings).cancel(run)
    assert not [r for r in vertex.requests if r[0] == "CancelCustomJob"]


@pytest.mark.parametrize(
    ("inject", "transient"),
    [
        (lambda fake, name: fake.fail_next("GetCustomJob", code=503), True),
        (lambda fake, name: fake.fail_next("GetCustomJob", code=429), True),
        (lambda fake, name: fake.fail_next("GetCustomJob", code=403), False),
        (lambda fake, name: fake.forget(name), False),
    ],
    ids=["unavailable", "rate-limited", "permission-denied", "not-found"],
)
def test_poll_errors_say_whether_to_retry(
    vertex,
    vertex_settings,
    tmp_path,
    inject: Callable[[FakeVertex, str], None],
    transient: bool,
):
    backend, run = submitted(vertex, vertex_settings, tmp_path, ["RUNNING"])
    inject(vertex, run.remote["customJobName"])

    with pytest.raises((RemoteCallTransient, RemoteCallPermanent)) as failed:
        backend.poll(run)

    assert is_transient(failed.value) is transient
    assert str(failed.value).startswith("Vertex AI GetCustomJob: ")


# -- through the service: API, worker, poller ---------------------------------------------


@pytest.fixture
def settings(settings: Settings, vertex: FakeVertex, gcs_bucket: str) -> Settings:
    """The service (its database, local blobs) with vertex-custom configured on the stand-in."""
    return settings.model_copy(
        update={
            "vertex_project": vertex.project,
            "vertex_location": vertex.location,
            "vertex_staging_bucket": f"gs://{gcs_bucket}/staging",
            "vertex_api_endpoint": vertex.endpoint,
            "vertex_api_transport": "rest",
            "vertex_service_account": JOB_ACCOUNT,
            "vertex_custom_image": IMAGE,
            "training_max_epochs": 1,
            "remote_poll_seconds": 0.2,
        }
    )


@contextlib.contextmanager
def worker_running(settings: Settings, session_factory) -> Iterator[None]:
    """A worker in a thread: it submits, runs the periodic poller and collects."""
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    thread = threading.Thread(target=worker.run, name="test-worker")
    thread.start()
    try:
        yield
    finally:
        worker.request_stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop"


def watch(client, training_job_id: str, until: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """The job's (state, remoteState) as it changes, until ``until`` holds for it."""
    seen: list[Any] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/trainingJobs/{training_job_id}").json()
        if not seen or seen[-1][:2] != (job["state"], job["remoteState"]):
            seen.append((job["state"], job["remoteState"], job))
        if until(job):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"timed out; seen {[s[:2] for s in seen]}")


def finished(job: dict[str, Any]) -> bool:
    return job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def test_a_vertex_custom_training_job_end_to_end(
    client, make_dataset, run_jobs, run_command, settings, session_factory, gcs_client, gcs_bucket
):
    dataset_id = make_dataset({"TRAIN": 6, "VALIDATION": 2, "TEST": 3})
    job = start_training(client, dataset_id, backend="vertex-custom", budgetMilliNodeHours=50)
    assert (job["backend"], job["state"]) == ("vertex-custom", "QUEUED")

    with worker_running(settings, session_factory):
        seen = watch(client, job["id"], finished)

    states = [s[:2] for s in seen]
    assert ("RUNNING", "JOB_STATE_RUNNING") in states
    assert states[-1] == ("SUCCEEDED", "JOB_STATE_SUCCEEDED"), seen[-1][2]["error"]
    done = seen[-1][2]
    [custom_job] = run_command.custom_jobs
    folder = f"gs://{gcs_bucket}/staging/edge-automl/{job['id']}"
    assert done["remoteResources"]["customJobName"] == custom_job
    assert done["remoteResources"]["outputUri"] == f"{folder}/output"
    assert done["successfulStopReason"] == "MODEL_CONVERGED", "the epoch cap ended it"
    assert 1 <= done["costMilliNodeHours"] <= 50
    assert done["progress"]["epoch"] == 1 and done["progress"]["fraction"] == 1.0
    # The images went to the staging bucket once, for the job to read.
    snapshot = read_snapshot(client, job["id"])
    staged_data = f"staging/edge-automl/{job['id']}/data/"
    assert staged(gcs_client, gcs_bucket) == sorted(
        [f"{staged_data}{i['blobKey']}" for i in snapshot["images"]]
        + [f"{staged_data}training/{job['id']}/snapshot.json"]
        + [
            f"staging/edge-automl/{job['id']}/output/{name}"
            for name in ("model.pt", "progress.json", "result.json")
        ]
    )

    # Registered and evaluated on TEST as a local job's model is.
    model_id = done["modelId"]
    model = client.get(f"/v1/models/{model_id}").json()
    assert model["trainingJobId"] == job["id"] and model["labels"] == ["circle", "square"]
    [version] = model["versions"]
    output = open_blob_store(f"{folder}/output")
    result = json.loads(output.get("result.json"))
    assert version["sha256"] == result["modelSha256"]
    weights = client.get(f"/v1/models/{model_id}/artifacts/pytorch").content
    assert weights == output.get("model.pt")
    evaluations = client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
    [evaluation] = evaluations
    assert evaluation["split"] == "TEST" and evaluation["imageCount"] == 3

    # ... and it exports and serves like one.
    exported = client.post(f"/v1/models/{model_id}:export", json={"format": "onnx"})
    assert exported.status_code == 200, exported.text
    assert run_jobs() == 1
    operation = client.get(f"/v1/operations/{exported.json()['id']}").json()
    assert operation["metadata"]["state"] == "SUCCEEDED", operation["error"]
    assert client.post(f"/v1/models/{model_id}:deploy").status_code == 200
    image = make_scene(99, size=(200, 150))[0]
    answer = client.post(
        f"/v1/models/{model_id}:predict",
        json={"instances": [{"content": base64.b64encode(image).decode()}]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["deployedModelId"] == f"{model_id}-v1"


def test_a_custom_job_whose_command_fails_fails_the_training_job(
    client, make_dataset, run_command, settings, session_factory, gcs_bucket
):
    dataset_id = make_dataset({"TRAIN": 2, "VALIDATION": 1})
    job = start_training(client, dataset_id, backend="vertex-custom", budgetMilliNodeHours=50)
    # Bytes that are no image, already in the staging bucket (submit keeps what is there):
    # the trainer crashes reading them, and the container exits 1.
    data = open_blob_store(f"gs://{gcs_bucket}/staging/edge-automl/{job['id']}/data")
    for image in read_snapshot(client, job["id"])["images"]:
        data.put(image["blobKey"], b"not a jpeg")

    with worker_running(settings, session_factory):
        seen = watch(client, job["id"], finished)

    done = seen[-1][2]
    assert (done["state"], done["remoteState"]) == ("FAILED", "JOB_STATE_FAILED")
    assert done["error"]["code"] == 3
    assert "exited with a non-zero status of 1" in done["error"]["message"]
    assert "cannot identify image file" in done["error"]["message"], "the stderr tail"
    assert done["modelId"] is None and client.get("/v1/models").json()["models"] == []


def test_a_cancelled_vertex_custom_job_stops_the_remote_run(
    client, make_dataset, run_command, settings, session_factory
):
    dataset_id = make_dataset({"TRAIN": 2, "VALIDATION": 1})
    job = start_training(client, dataset_id, backend="vertex-custom", budgetMilliNodeHours=50)

    with worker_running(settings, session_factory):
        watch(client, job["id"], lambda j: j["remoteState"] == "JOB_STATE_RUNNING")
        cancelled = client.post(f"/v1/trainingJobs/{job['id']}:cancel")
        assert cancelled.status_code == 200, cancelled.text
        seen = watch(client, job["id"], finished)

    done = seen[-1][2]
    assert (done["state"], done["remoteState"]) == ("CANCELLED", "JOB_STATE_CANCELLED")
    [(name, running)] = run_command.commands.items()
    assert running.process.poll() is not None, "the container's process was stopped"
    cancels = [r for r in run_command.requests if r[0] == "CancelCustomJob"]
    assert [r[1] for r in cancels] == [name], "cancelled once"
    assert done["modelId"] is None


# -- deploy/vertex-custom, read-checked --------------------------------------------------

SETTING = re.compile(r"EDGE_AUTOML_[A-Z0-9_]*[A-Z0-9]")


def sample_env() -> tuple[dict[str, str], set[str]]:
    """vertex.env's active settings, and every name it mentions (commented ones too)."""
    active: dict[str, str] = {}
    for line in (DEPLOY / "vertex.env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            active[name] = value
    return active, set(SETTING.findall((DEPLOY / "vertex.env").read_text()))


def test_the_sample_config_is_valid_settings_naming_every_vertex_setting(monkeypatch):
    active, mentioned = sample_env()
    fields = {f"EDGE_AUTOML_{name.upper()}" for name in Settings.model_fields}
    for path in DEPLOY.iterdir():
        unknown = set(SETTING.findall(path.read_text())) - fields
        assert not unknown, f"{path.name} names settings the service does not read: {unknown}"
    wanted = {
        name
        for name in fields
        if name.startswith(("EDGE_AUTOML_VERTEX_", "EDGE_AUTOML_REMOTE_POLL_"))
    }
    assert wanted <= mentioned, f"vertex.env leaves out {wanted - mentioned}"
    assert "EDGE_AUTOML_TRAINING_BACKEND" in active

    for name, value in active.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()  # from the environment, as the service reads it

    assert settings.training_backend == "vertex-custom"
    assert settings.missing_for_backend("vertex-custom") == []
    assert settings.vertex_custom_accelerator_type == "NVIDIA_TESLA_T4"
    assert settings.remote_poll_seconds == 30


def test_the_documented_custom_job_is_the_one_the_backend_creates(monkeypatch, tmp_path):
    from google.cloud.aiplatform_v1 import types

    config = (DEPLOY / "custom-job.json").read_text()
    documented = types.CustomJobSpec.from_json(config)  # unknown fields fail here
    for name, value in sample_env()[0].items():
        monkeypatch.setenv(name, value)
    settings = load_settings(blob_url=f"file://{tmp_path / 'blobs'}")
    backend = VertexCustomBackend(settings)
    run = make_run(
        settings,
        open_blob_store(f"file://{tmp_path / 'service'}"),
        model_type="MOBILE_TF_VERSATILE_1",
        budget_milli_node_hours=24000,
        seed=0,
    )
    [pool] = documented.worker_pool_specs
    args = build_parser().parse_args(list(pool.container_spec.args))
    assert args.handler.__name__ == "cmd_train_job"

    made = backend.custom_job(
        run, backend.job_spec(run, args.snapshot, args.images_from, args.output)
    ).job_spec

    [made_pool] = made.worker_pool_specs
    assert made_pool.machine_spec == pool.machine_spec
    assert made_pool.replica_count == pool.replica_count
    assert made_pool.container_spec.image_uri == pool.container_spec.image_uri
    assert made_pool.container_spec.command == pool.container_spec.command
    assert list(made_pool.container_spec.args) == list(pool.container_spec.args)
    assert made.service_account == documented.service_account
    assert made.base_output_directory == documented.base_output_directory
    assert made.scheduling.timeout == documented.scheduling.timeout


def documented_command_lines() -> list[list[str]]:
    """Every ``edge-automl train-job`` line of the README (continuations joined)."""
    text = (DEPLOY / "README.md").read_text().replace("\\\n", " ")
    return [
        shlex.split(line) for line in text.splitlines() if line.startswith("edge-automl train-job ")
    ]


def test_the_documented_command_lines_parse_with_the_cli():
    lines = documented_command_lines()
    assert len(lines) == 2
    for argv in lines:
        args = build_parser().parse_args(argv[1:])
        assert args.handler.__name__ == "cmd_train_job"
        assert args.model_type and args.budget_milli_node_hours >= 10
    options = {a for a in build_parser().parse_args(lines[0][1:]).__dict__}
    readme = (DEPLOY / "README.md").read_text()
    for option in options - {"command", "handler"}:
        flag = "--" + option.replace("_", "-")
        assert f"| `{flag}` |" in readme, f"the README's option table leaves out {flag}"


def test_the_setup_script_parses():
    done = subprocess.run(
        ["bash", "-n", str(DEPLOY / "setup.sh")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr

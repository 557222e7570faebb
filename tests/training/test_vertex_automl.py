"""vertex-automl end to end: the real aiplatform GAPIC clients over the wire against the
Vertex AI stand-in (tests/fixtures/vertex.py), Cloud Storage through the emulator, the poller
and the worker driving the job on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from app.config import Settings, load_settings
from app.db.model import Model
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.training import service as training_service
from app.training.backends.vertex_automl import BOUNDING_BOX_IMPORT_SCHEMA
from app.training.poller import Poller
from tests.datasets.conftest import make_zip
from tests.datasets.test_api import create_dataset, import_file
from tests.fixtures.server import REPO_ROOT
from tests.support.processes import stop_all
from tests.training.conftest import make_scene, start_training

LABELS = ("red", "green", "blue")  # the labels of the float_tflite fixture's model
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def vertex_settings(
    database_url: str, tmp_path: Any, fake: Any, bucket: str, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "blob_url": f"file://{tmp_path / 'blobs'}",
        "job_heartbeat_seconds": 0.2,
        "job_stall_timeout_seconds": 1.0,
        "job_retry_backoff_seconds": 0.0,
        "worker_poll_seconds": 0.05,
        "log_format": "text",
        "vertex_project": fake.project,
        "vertex_location": fake.location,
        "vertex_staging_bucket": f"gs://{bucket}/staging",
        "vertex_api_endpoint": fake.endpoint,
        "vertex_api_transport": "rest",
        "remote_poll_seconds": 0.05,
        "remote_poll_max_backoff_seconds": 0.2,
        **extra,
    }
    return load_settings(**values)


@pytest.fixture
def settings(database_url, tmp_path, vertex, gcs_bucket) -> Settings:
    return vertex_settings(database_url, tmp_path, vertex, gcs_bucket)


@pytest.fixture
def fake(vertex, float_tflite):
    vertex.export_file = float_tflite
    return vertex


def rgb_zip(per_split: int = 3) -> bytes:
    """Scenes whose boxes carry the labels red, green, blue, each in every split."""
    files: dict[str, bytes | str] = {}
    rows = []
    seed = 100
    for split in ("TRAIN", "VALIDATION", "TEST"):
        for i in range(per_split):
            data, boxes = make_scene(seed)
            name = f"images/{seed}.jpg"
            files[name] = data
            for _, x0, y0, x1, y1 in boxes:
                label = LABELS[i % len(LABELS)]
                rows.append(f"{split},{name},{label},{x0:.4f},{y0:.4f},,,{x1:.4f},{y1:.4f},,")
            seed += 1
    files["labels.csv"] = "\n".join(rows)
    return make_zip(files)


@pytest.fixture
def rgb_dataset(client, run_jobs) -> str:
    dataset_id = create_dataset(client, "rgb")
    operation = import_file(client, run_jobs, dataset_id, rgb_zip())
    assert operation["metadata"]["state"] == "SUCCEEDED", operation
    return dataset_id


def read(client, training_job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/trainingJobs/{training_job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def drive(
    settings: Settings,
    session_factory: Any,
    client: Any,
    training_job_id: str,
    *,
    until: tuple[str, ...] = TERMINAL,
    timeout: float = 60.0,
    check: Any = None,
) -> dict[str, Any]:
    """Run workers' steps and polls (fresh objects, as after a restart) until the job's
    state is in ``until``; ``check(body)`` may stop earlier by returning true."""
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    poller = Poller(settings=settings, blobs=worker.blobs, session_factory=session_factory)
    deadline = time.monotonic() + timeout
    while True:
        worker.run_once()
        poller.poll_due()
        body = read(client, training_job_id)
        if body["state"] in until or (check is not None and check(body)):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(settings.remote_poll_seconds)


def start(client, dataset_id: str, **fields: Any) -> dict[str, Any]:
    return start_training(
        client, dataset_id, backend="vertex-automl", budgetMilliNodeHours=2000, **fields
    )


def calls(fake, method: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [c for c in fake.requests if c[0] == method]


def test_a_full_automl_run_registers_the_exported_model(
    client, settings, session_factory, fake, rgb_dataset, float_tflite, gcs_client, gcs_bucket
):
    job = start(client, rgb_dataset)
    assert job["backend"] == "vertex-automl"
    assert job["state"] == "QUEUED"
    seen: list[str | None] = []

    def note(body: dict[str, Any]) -> bool:
        seen.append(body["remoteState"])
        return False

    done = drive(settings, session_factory, client, job["id"], check=note)
    assert done["state"] == "SUCCEEDED", done
    assert done["remoteState"] == "PIPELINE_STATE_SUCCEEDED"
    # PENDING, RUNNING then SUCCEEDED, as the pipeline went.
    states = [s for s in dict.fromkeys(seen) if s]
    assert states == [
        "PIPELINE_STATE_PENDING",
        "PIPELINE_STATE_RUNNING",
        "PIPELINE_STATE_SUCCEEDED",
    ]
    remote = done["remoteResources"]
    for key in ("datasetName", "importOperation", "pipelineName", "modelName", "exportUri"):
        assert key in remote, remote
    assert done["lastPollError"] is None

    # The import: our images copied once to the staging bucket, one row per box, our splits.
    (record,) = fake.imports[remote["datasetName"]]
    assert record.import_schema_uri == BOUNDING_BOX_IMPORT_SCHEMA
    assert record.uris == [f"gs://{gcs_bucket}/staging/edge-automl/{job['id']}/import.csv"]
    assert {row[0] for row in record.rows} == {"TRAINING", "VALIDATION", "TEST"}
    assert {row[2] for row in record.rows} == set(LABELS)
    assert len({row[1] for row in record.rows}) == 9
    assert all(row[1].startswith(f"gs://{gcs_bucket}/staging/edge-automl/") for row in record.rows)

    # The pipeline: AutoML object detection with our model type, budget and split filters.
    ((_, _, body),) = calls(fake, "CreateTrainingPipeline")
    pipeline = body["trainingPipeline"]
    assert pipeline["trainingTaskInputs"]["modelType"] == "MOBILE_TF_LOW_LATENCY_1"
    assert float(pipeline["trainingTaskInputs"]["budgetMilliNodeHours"]) == 2000
    assert "uptrainBaseModelId" not in pipeline["trainingTaskInputs"]
    split = pipeline["inputDataConfig"]["filterSplit"]
    assert split["testFilter"] == "labels.aiplatform.googleapis.com/ml_use=test"
    assert remote["datasetName"].endswith("/" + pipeline["inputDataConfig"]["datasetId"])

    # The model: the exported TFLite file, hashed, with Vertex's evaluation mapped.
    model_id = training_service.model_id_for(job["id"])
    assert done["modelId"] == model_id
    assert done["costMilliNodeHours"] == 1000  # what the stand-in's pipeline reports
    assert done["successfulStopReason"] == "MODEL_CONVERGED"
    model = client.get(f"/v1/models/{model_id}").json()
    assert model["source"] == "vertex"
    assert model["trainingJobId"] == job["id"]
    assert sorted(model["labels"]) == sorted(LABELS)
    assert model["modelHash"] == hashlib.sha256(float_tflite).hexdigest()
    artifact = client.get(f"/v1/models/{model_id}/artifacts/tflite")
    assert artifact.status_code == 200, artifact.text
    assert artifact.content == float_tflite

    evaluations = client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
    (evaluation,) = evaluations
    assert evaluation["split"] == "TEST"
    assert evaluation["artifact"]["format"] == "tflite"
    expected = fake.evaluation
    assert evaluation["boundingBoxMeanAveragePrecision"] == pytest.approx(
        expected["boundingBoxMeanAveragePrecision"]
    )
    full = client.get(f"/v1/models/{model_id}/evaluations/{evaluation['id']}").json()
    assert full["metrics"]["evaluatedBoundingBoxCount"] == expected["evaluatedBoundingBoxCount"]
    assert len(full["metrics"]["boundingBoxMetrics"]) == len(expected["boundingBoxMetrics"])
    at_half = next(m for m in expected["boundingBoxMetrics"] if m["iouThreshold"] == 0.5)
    assert full["ap50"] == pytest.approx(at_half["meanAveragePrecision"])

    # Published, apps download it.
    published = client.post(f"/v1/models/{model_id}:publish", json={})
    assert published.status_code == 200, published.text
    # A second collect or poll changes nothing.
    drive(settings, session_factory, client, job["id"], timeout=1)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Model)) == 1


def test_images_already_in_cloud_storage_are_referenced_in_place(
    database_url, tmp_path, fake, gcs_bucket, session_factory, engine, run_jobs
):
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = vertex_settings(
        database_url, tmp_path, fake, gcs_bucket, blob_url=f"gs://{gcs_bucket}/blobs"
    )
    with TestClient(create_app(settings, engine=engine)) as client:
        dataset_id = create_dataset(client, "rgb")
        worker = Worker(
            settings=settings, session_factory=session_factory, registry=default_registry()
        )
        response = client.post(
            f"/v1/datasets/{dataset_id}:import", files={"file": ("d.zip", rgb_zip())}
        )
        assert response.status_code == 200, response.text
        worker.run(stop_when_idle=True)
        job = start(client, dataset_id)
        done = drive(settings, session_factory, client, job["id"])
        assert done["state"] == "SUCCEEDED", done
    (record,) = fake.imports[done["remoteResources"]["datasetName"]]
    assert all(row[1].startswith(f"gs://{gcs_bucket}/blobs/") for row in record.rows)


def test_a_failed_pipeline_fails_the_job_with_vertex_s_error(
    client, settings, session_factory, fake, rgb_dataset
):
    fake.script_pipeline(
        ["PENDING", "RUNNING", "FAILED"],
        error={"code": 8, "message": "Quota exceeded for aiplatform.googleapis.com/training"},
    )
    job = start(client, rgb_dataset)
    done = drive(settings, session_factory, client, job["id"])
    assert done["state"] == "FAILED"
    assert done["error"]["code"] == 8
    assert done["error"]["message"] == "Quota exceeded for aiplatform.googleapis.com/training"
    assert done["remoteState"] == "PIPELINE_STATE_FAILED"
    assert done["modelId"] is None
    assert calls(fake, "ExportModel") == []


def test_a_cancelled_job_cancels_the_pipeline_and_waits_for_it(
    client, settings, session_factory, fake, rgb_dataset
):
    fake.script_pipeline(["PENDING", "RUNNING"])
    job = start(client, rgb_dataset)
    running = drive(
        settings,
        session_factory,
        client,
        job["id"],
        check=lambda body: body["remoteState"] == "PIPELINE_STATE_RUNNING",
    )
    cancelled = client.post(f"/v1/trainingJobs/{job['id']}:cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "CANCELLING"
    done = drive(settings, session_factory, client, job["id"])
    assert done["state"] == "CANCELLED"
    assert done["remoteState"] == "PIPELINE_STATE_CANCELLED"
    assert done["error"]["code"] == 1
    assert done["remoteResources"]["cancelRequested"] is True
    ((_, name, _),) = calls(fake, "CancelTrainingPipeline")
    assert name == running["remoteResources"]["pipelineName"]
    assert done["modelId"] is None


def test_a_pipeline_that_vanishes_fails_the_job_with_the_message(
    client, settings, session_factory, fake, rgb_dataset
):
    fake.script_pipeline(["PENDING", "RUNNING"])
    job = start(client, rgb_dataset)
    running = drive(
        settings,
        session_factory,
        client,
        job["id"],
        check=lambda body: body["remoteState"] == "PIPELINE_STATE_RUNNING",
    )
    pipeline = running["remoteResources"]["pipelineName"]
    fake.forget(pipeline)
    done = drive(settings, session_factory, client, job["id"])
    assert done["state"] == "FAILED"
    assert done["error"]["code"] == 5
    assert done["error"]["status"] == "NOT_FOUND"
    assert pipeline in done["error"]["message"]


def test_transient_errors_are_retried_and_the_job_still_succeeds(
    client, settings, session_factory, fake, rgb_dataset
):
    fake.script_pipeline(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    job = start(client, rgb_dataset)
    drive(
        settings,
        session_factory,
        client,
        job["id"],
        check=lambda body: body["remoteState"] == "PIPELINE_STATE_PENDING",
    )
    fake.fail_next("GetTrainingPipeline", code=503, times=2)
    fake.fail_next("GetTrainingPipeline", code=429, times=1)
    failures: list[int] = []

    def note(body: dict[str, Any]) -> bool:
        if body["lastPollError"] is not None:
            failures.append(body["lastPollError"]["code"])
        return False

    done = drive(settings, session_factory, client, job["id"], check=note)
    assert done["state"] == "SUCCEEDED", done
    assert 14 in failures and 8 in failures  # UNAVAILABLE, then RESOURCE_EXHAUSTED, shown
    assert done["lastPollError"] is None  # cleared by the next good poll
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Model)) == 1


def test_an_outage_while_submitting_is_retried_by_the_queue(
    client, settings, session_factory, fake, rgb_dataset
):
    fake.fail_next("CreateDataset", code=503, times=1)
    job = start(client, rgb_dataset)
    done = drive(settings, session_factory, client, job["id"])
    assert done["state"] == "SUCCEEDED", done
    assert len(calls(fake, "CreateDataset")) == 2
    assert len(fake.datasets) == 1


def test_a_refused_submit_fails_the_job_with_the_remote_message(
    client, settings, session_factory, fake, rgb_dataset
):
    fake.fail_next("CreateDataset", code=403, message="aiplatform.datasets.create denied")
    job = start(client, rgb_dataset)
    done = drive(settings, session_factory, client, job["id"])
    assert done["state"] == "FAILED"
    assert done["error"]["code"] == 7
    assert "aiplatform.datasets.create denied" in done["error"]["message"]
    assert done["attempts"] == 1


def test_a_restart_mid_run_is_finished_by_new_workers_and_pollers(
    client, settings, session_factory, fake, rgb_dataset, engine
):
    from fastapi.testclient import TestClient

    from app.main import create_app

    fake.script_pipeline(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    job = start(client, rgb_dataset)
    drive(
        settings,
        session_factory,
        client,
        job["id"],
        check=lambda body: body["remoteState"] == "PIPELINE_STATE_RUNNING",
    )
    # Everything in memory goes: a new app, new workers and pollers on the same database.
    from app.db.session import make_engine, make_session_factory

    engine2 = make_engine(settings.database_url)
    try:
        sessions2 = make_session_factory(engine2)
        with TestClient(create_app(settings, engine=engine2)) as client2:
            assert read(client2, job["id"])["state"] == "RUNNING"
            done = drive(settings, sessions2, client2, job["id"])
    finally:
        engine2.dispose()
    assert done["state"] == "SUCCEEDED", done
    assert len(calls(fake, "CreateTrainingPipeline")) == 1


def test_a_killed_worker_process_is_replaced_and_the_job_finishes(
    client, settings, fake, rgb_dataset
):
    """Real ``edge-automl worker`` processes: the first submits the job, then is killed
    (SIGKILL: no clean-up) while Vertex trains; a new one's periodic poller finishes it."""
    env = {
        **os.environ,  # STORAGE_EMULATOR_HOST among them
        "EDGE_AUTOML_DATABASE_URL": settings.database_url,
        "EDGE_AUTOML_BLOB_URL": settings.blob_url,
        "EDGE_AUTOML_WORKER_POLL_SECONDS": "0.1",
        "EDGE_AUTOML_JOB_HEARTBEAT_SECONDS": "0.3",
        "EDGE_AUTOML_JOB_STALL_TIMEOUT_SECONDS": "3",
        "EDGE_AUTOML_LOG_FORMAT": "text",
        "EDGE_AUTOML_LOG_LEVEL": "WARNING",
        "EDGE_AUTOML_VERTEX_PROJECT": fake.project,
        "EDGE_AUTOML_VERTEX_LOCATION": fake.location,
        "EDGE_AUTOML_VERTEX_STAGING_BUCKET": settings.vertex_staging_bucket or "",
        "EDGE_AUTOML_VERTEX_API_ENDPOINT": fake.endpoint,
        "EDGE_AUTOML_VERTEX_API_TRANSPORT": "rest",
        "EDGE_AUTOML_REMOTE_POLL_SECONDS": "0.2",
    }
    processes: list[subprocess.Popen[bytes]] = []

    def start_worker() -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "app", "worker"]
        processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env))
        return processes[-1]

    def wait_until(what: str, predicate: Any, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = read(client, job["id"])
            if predicate(body):
                return body
            assert time.monotonic() < deadline, f"waiting for {what}: {body}"
            time.sleep(0.1)

    fake.script_pipeline(["PENDING", "RUNNING"])  # RUNNING until told otherwise
    job = start(client, rgb_dataset)
    try:
        first = start_worker()
        wait_until("RUNNING remotely", lambda b: b["remoteState"] == "PIPELINE_STATE_RUNNING")
        first.kill()
        first.wait(10)
        polls = len(calls(fake, "GetTrainingPipeline"))
        time.sleep(1.0)
        assert len(calls(fake, "GetTrainingPipeline")) == polls  # nobody polls now
        assert read(client, job["id"])["state"] == "RUNNING"

        fake.script_pipeline(["SUCCEEDED"])
        start_worker()
        done = wait_until("the end", lambda b: b["state"] in TERMINAL)
    finally:
        stop_all(processes, timeout=30)
    assert done["state"] == "SUCCEEDED", done
    assert done["modelId"] == training_service.model_id_for(job["id"])
    assert len(calls(fake, "CreateTrainingPipeline")) == 1
    assert len(calls(fake, "ExportModel")) == 1


def test_two_pollers_at_once_register_one_model(
    client, settings, session_factory, fake, rgb_dataset
):
    job = start(client, rgb_dataset)
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    worker.run_once()  # submit, handed to the pollers
    pollers = [
        Poller(settings=settings, blobs=worker.blobs, session_factory=session_factory)
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while read(client, job["id"])["state"] != "SUCCEEDED":
        assert time.monotonic() < deadline
        threads = [threading.Thread(target=p.poll_due) for p in pollers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Both workers try to collect; one job is claimed once.
        Worker(
            settings=settings, session_factory=session_factory, registry=default_registry()
        ).run_once()
        worker.run_once()
        time.sleep(settings.remote_poll_seconds)
    assert len(calls(fake, "CreateTrainingPipeline")) == 1
    assert len(calls(fake, "ExportModel")) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Model)) == 1


def test_the_grpc_transport_runs_a_job_end_to_end(
    database_url, tmp_path, vertex_grpc, float_tflite, gcs_bucket, engine, session_factory
):
    from fastapi.testclient import TestClient

    from app.main import create_app

    vertex_grpc.export_file = float_tflite
    settings = vertex_settings(
        database_url, tmp_path, vertex_grpc, gcs_bucket, vertex_api_transport="grpc"
    )
    with TestClient(create_app(settings, engine=engine)) as client:
        dataset_id = create_dataset(client, "rgb")
        worker = Worker(
            settings=settings, session_factory=session_factory, registry=default_registry()
        )
        response = client.post(
            f"/v1/datasets/{dataset_id}:import", files={"file": ("d.zip", rgb_zip())}
        )
        assert response.status_code == 200, response.text
        worker.run(stop_when_idle=True)
        job = start(client, dataset_id)
        done = drive(settings, session_factory, client, job["id"])
    assert done["state"] == "SUCCEEDED", done
    assert calls(vertex_grpc, "CreateTrainingPipeline")

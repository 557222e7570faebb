"""The training task with the real detector core on tiny generated datasets: success with a
registered, evaluated model; cancel while running; refusal; hand-back and resume."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.detector.bundle import load_bundle
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from tests.datasets.test_api import all_images, blob_files
from tests.training.conftest import epoch_reported, start_training
from tests.training.test_api import add_model


@pytest.fixture
def settings(settings):
    """Two epochs at most, and progress written at every step."""
    return settings.model_copy(update={"training_max_epochs": 2, "training_progress_seconds": 0.0})


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def worker_thread(settings, session_factory) -> tuple[Worker, threading.Thread]:
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    return worker, thread


def test_a_job_trains_registers_and_evaluates_its_model(client, make_dataset, run_jobs, settings):
    dataset_id = make_dataset({"TRAIN": 8, "VALIDATION": 2, "TEST": 3}, negatives=1)
    job = start_training(client, dataset_id, budgetMilliNodeHours=50)
    assert run_jobs() == 1

    done = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert done["state"] == "SUCCEEDED", done["error"]
    assert done["attempts"] == 1 and done["error"] is None
    assert done["successfulStopReason"] == "MODEL_CONVERGED", "the epoch cap ended it"
    assert 1 <= done["costMilliNodeHours"] <= 50
    progress = done["progress"]
    assert progress["epoch"] == 2 and progress["fraction"] == 1.0
    assert set(progress["losses"]) >= {"total"}
    assert progress["elapsedMilliNodeHours"] <= done["costMilliNodeHours"]
    assert progress["imagesPerSecond"] > 0
    model_id = done["modelId"]
    assert model_id

    operation = client.get(f"/v1/{done['operationName']}").json()
    response = operation["response"]
    assert (response["trainingJobId"], response["modelId"]) == (job["id"], model_id)
    assert response["epochs"] == 2 and response["resumedAtEpoch"] is None
    assert response["costMilliNodeHours"] == done["costMilliNodeHours"]

    model = client.get(f"/v1/models/{model_id}").json()
    assert model["displayName"] == job["displayName"]
    assert model["labels"] == job["labels"] == ["circle", "square"]
    assert (model["modelType"], model["inputSize"]) == ("MOBILE_TF_LOW_LATENCY_1", 320)
    assert model["trainingJobId"] == job["id"] and model["latestVersion"] == 1
    blobs = client.app.state.blobs
    file = blobs.get(f"models/{model_id}/versions/1/model.pt")
    [version] = model["versions"]
    assert version["sha256"] == hashlib.sha256(file).hexdigest()
    assert version["sizeBytes"] == len(file)
    assert load_bundle(file).labels == ("circle", "square")

    [summary] = client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
    assert response["evaluation"]["id"] == summary["id"]
    evaluation = client.get(f"/v1/models/{model_id}/evaluations/{summary['id']}").json()
    test_boxes = sum(i["boxCount"] for i in all_images(client, dataset_id) if i["split"] == "TEST")
    assert (evaluation["split"], evaluation["imageCount"]) == ("TEST", 3)
    assert evaluation["evaluatedBoundingBoxCount"] == test_boxes
    assert evaluation["datasetId"] == dataset_id
    assert evaluation["artifact"] == {"format": "pytorch", "sha256": version["sha256"]}
    assert len(evaluation["metrics"]["boundingBoxMetrics"]) == 23
    assert evaluation["cocoMetrics"]["overall"]["AP50"] >= 0 or evaluation["ap50"] is None

    # The snapshot stays as the model's lineage; the checkpoint is gone.
    files = [f for f in blob_files(settings) if f.startswith(("training/", "models/"))]
    assert sorted(files) == sorted(
        [
            f"training/{job['id']}/snapshot.json",
            f"models/{model_id}/versions/1/model.pt",
            f"models/{model_id}/evaluations/{summary['id']}/metrics.json",
            f"models/{model_id}/evaluations/{summary['id']}/matches.npz",
        ]
    )
    error = client.post(f"/v1/trainingJobs/{job['id']}:cancel").json()["error"]
    assert error["status"] == "FAILED_PRECONDITION" and "SUCCEEDED" in error["message"]


def test_cancel_while_training_stops_it_and_keeps_nothing(
    client, make_dataset, settings, session_factory
):
    settings = settings.model_copy(update={"training_max_epochs": None})
    dataset_id = make_dataset({"TRAIN": 8, "VALIDATION": 2, "TEST": 2})
    before = blob_files(settings)
    job = start_training(client, dataset_id, budgetMilliNodeHours=100, disableEarlyStopping=True)
    _, thread = worker_thread(settings, session_factory)
    try:
        wait_for(
            lambda: client.get(f"/v1/trainingJobs/{job['id']}").json()["progress"],
            120,
            "the first training step",
        )
        running = client.get(f"/v1/trainingJobs/{job['id']}").json()
        assert running["state"] == "RUNNING" and running["startTime"] is not None
        cancelling = client.post(f"/v1/trainingJobs/{job['id']}:cancel").json()
        assert cancelling["state"] in ("CANCELLING", "CANCELLED")
    finally:
        thread.join(120)
    assert not thread.is_alive()
    ended = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert ended["state"] == "CANCELLED" and ended["modelId"] is None
    assert ended["progress"]["epoch"] < 10
    assert blob_files(settings) == before
    assert client.get("/v1/models").json()["models"] == []


def test_a_base_model_that_is_not_a_detector_fails_the_job_without_retry(
    client, make_dataset, run_jobs, session_factory, settings
):
    dataset_id = make_dataset()
    before = blob_files(settings)
    base = add_model(
        session_factory, client, labels=["circle", "square"], model_type="MOBILE_TF_LOW_LATENCY_1"
    )
    job = start_training(client, dataset_id, baseModelId=base)
    assert run_jobs() == 1
    failed = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert failed["state"] == "FAILED" and failed["attempts"] == 1
    assert failed["error"]["status"] == "FAILED_PRECONDITION"
    assert "model file" in failed["error"]["message"]
    # Only the base model's own file remains.
    assert [f for f in blob_files(settings) if f not in before] == [
        f"models/{base}/versions/1/model.pt"
    ]


def test_a_handed_back_job_resumes_from_its_checkpoint(
    client, make_dataset, run_jobs, settings, session_factory
):
    settings = settings.model_copy(update={"training_max_epochs": 4})
    dataset_id = make_dataset({"TRAIN": 8, "VALIDATION": 2, "TEST": 2})
    job = start_training(client, dataset_id, budgetMilliNodeHours=200)
    checkpoint = f"training/{job['id']}/checkpoint.pt"
    blobs = client.app.state.blobs
    worker, thread = worker_thread(settings, session_factory)
    try:
        # The checkpoint is stored before the epoch is reported: wait for both, or the stop
        # can land between them and the job's row still shows epoch 0.
        wait_for(
            lambda: blobs.exists(checkpoint) and epoch_reported(client, job["id"]),
            180,
            "the first checkpoint",
        )
        worker.request_stop()
    finally:
        thread.join(120)
    handed_back = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert handed_back["state"] == "QUEUED" and handed_back["attempts"] == 0
    assert blobs.exists(checkpoint), "the checkpoint stays for the next attempt"
    stopped_at = handed_back["progress"]["epoch"]
    assert stopped_at >= 1

    Worker(settings=settings, session_factory=session_factory, registry=default_registry()).run(
        stop_when_idle=True
    )
    done = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert done["state"] == "SUCCEEDED", done["error"]
    response = client.get(f"/v1/{done['operationName']}").json()["response"]
    # The checkpoint of an epoch is stored before the epoch is reported, so the attempt may
    # have stopped between the two: one epoch further than its row said.
    assert stopped_at <= response["resumedAtEpoch"] <= stopped_at + 1
    assert response["epochs"] == 4
    assert not blobs.exists(checkpoint)

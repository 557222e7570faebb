"""Training as users run it: worker processes, a killed worker's job resumed by another, and
a real dataset (../shared/datasets/fruit) trained through a served API to a useful model and
evaluated again on demand, its figures agreeing with pycocotools; then exported to ONNX,
evaluated as exported, deployed and asked for predictions matching PyTorch's.

These take minutes; the budgets are kept small.
"""

from __future__ import annotations

import base64
import csv
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.detector.bundle import load_bundle
from app.detector.data import model_input
from app.detector.matches import MatchTable
from app.detector.metrics import THRESHOLDS
from app.detector.predict import build_model, predict_images
from app.detector.tflite import TflitePredictor
from app.detector.types import Detections
from app.evaluation import service as evaluation_service
from app.kit.blobs import open_blob_store
from tests.datasets.conftest import SHARED_DATASETS
from tests.datasets.test_shared_datasets import zip_folder
from tests.detector.test_export import assert_same_detections
from tests.detector.test_metrics import brute_force_counts, pycoco_stats, to_coco
from tests.fixtures.server import REPO_ROOT, LiveServer
from tests.support.mediapipe import assert_mediapipe_agrees, mediapipe_detections
from tests.support.processes import stop_all
from tests.training.conftest import epoch_reported, start_training

# Their budgets are wall-clock time: other tests sharing the two cores would starve them.
pytestmark = pytest.mark.serial

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
log = logging.getLogger(__name__)

# fruit: 300 photos, three labels (apple, banana, orange). The budget is 9 minutes of training;
# 15 minutes reach 0.89 TEST mAP@0.5 (bench/train_quality.py), and the early part of a run is
# noisy. The floor is deliberately low: it catches a broken pipeline, not a small regression
# (bench/ is for those). It runs once, on PostgreSQL (the production set-up; the SQLite path
# trains in the other tests here).
FRUIT_BUDGET_MILLI_NODE_HOURS = 150
FRUIT_MIN_TEST_MAP50 = 0.25
# How far the int8 file's TEST mAP@0.5 may fall below float's on that short training.
INT8_MAX_AP50_LOSS = 0.05
# raccoon: 217 photos, one label; trained briefly (4 minutes: about 15 epochs, TEST mAP@0.5
# 0.21 when run alone; 106 epochs reach 0.91), for what a phone's MediaPipe finds. The floor
# catches a model that learnt nothing (an untrained one scores about 0), not a regression.
RACCOON_BUDGET_MILLI_NODE_HOURS = 70
RACCOON_MIN_TEST_MAP50 = 0.1
AP, AP50, AP75 = 0, 1, 2  # positions in COCOeval.stats


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Workers:
    """``edge-automl worker`` processes on the test database and blob store."""

    def __init__(self, settings, **env: str) -> None:
        self.env = {
            **os.environ,
            "EDGE_AUTOML_DATABASE_URL": settings.database_url,
            "EDGE_AUTOML_BLOB_URL": settings.blob_url,
            "EDGE_AUTOML_WORKER_POLL_SECONDS": "0.2",
            "EDGE_AUTOML_JOB_HEARTBEAT_SECONDS": "0.3",
            "EDGE_AUTOML_JOB_STALL_TIMEOUT_SECONDS": "3",
            "EDGE_AUTOML_JOB_RETRY_BACKOFF_SECONDS": "0",
            "EDGE_AUTOML_LOG_FORMAT": "text",
            "EDGE_AUTOML_LOG_LEVEL": "WARNING",
            **env,
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"], cwd=REPO_ROOT, env=self.env
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        stop_all(self.processes, timeout=30)


@pytest.fixture
def workers(settings) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(**env: str) -> Workers:
        made.append(Workers(settings, **env))
        return made[-1]

    yield make
    for pool in made:
        pool.stop()


def test_a_killed_workers_training_resumes_from_its_checkpoint_elsewhere(
    client, make_dataset, workers
):
    dataset_id = make_dataset({"TRAIN": 16, "VALIDATION": 4, "TEST": 4})
    job = start_training(client, dataset_id, budgetMilliNodeHours=300)
    blobs = client.app.state.blobs
    checkpoint = f"training/{job['id']}/checkpoint.pt"
    pool = workers(EDGE_AUTOML_TRAINING_MAX_EPOCHS="6", EDGE_AUTOML_TRAINING_PROGRESS_SECONDS="0.2")
    victim = pool.start()
    # The checkpoint is stored before the epoch is reported: wait for both, or the stop
    # can land between them and the job's row still shows epoch 0.
    wait_for(
        lambda: blobs.exists(checkpoint) and epoch_reported(client, job["id"]),
        300,
        "the first checkpoint",
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    interrupted = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert interrupted["state"] == "RUNNING" and interrupted["attempts"] == 1
    killed_at = interrupted["progress"]["epoch"]
    assert killed_at < 6, "the first worker must not have finished"

    pool.start()
    done = wait_for(
        lambda: (
            (j := client.get(f"/v1/trainingJobs/{job['id']}").json())["state"] in TERMINAL and j
        ),
        600,
        "the job to finish on the second worker",
    )
    assert done["state"] == "SUCCEEDED", done["error"]
    assert done["attempts"] == 2
    operation = client.get(f"/v1/{done['operationName']}").json()
    assert "stopped heartbeating" in operation["metadata"]["lastError"]["message"]
    response = operation["response"]
    # The checkpoint of an epoch is stored before the epoch is reported, so the worker may
    # have died between the two: one epoch further than its row said.
    assert response["resumedAtEpoch"] is not None
    assert 1 <= killed_at <= response["resumedAtEpoch"] <= killed_at + 1
    assert response["epochs"] == 6
    assert not blobs.exists(checkpoint)
    assert client.get(f"/v1/models/{done['modelId']}").json()["latestVersion"] == 1


def photos_of_test_split(folder: Path) -> list[bytes]:
    """The TEST split's photos of a dataset folder, in file order."""
    with open(folder / "labels.csv", newline="") as file:
        paths = sorted({row[1] for row in csv.reader(file) if row[0] == "TEST"})
    return [(folder / path).read_bytes() for path in paths]


def poll(http: httpx.Client, path: str, done: Callable[[dict[str, Any]], bool], timeout: float):
    return wait_for(lambda: (body := http.get(path).json()) and done(body) and body, timeout, path)


def export_and_evaluate(
    http: httpx.Client, model_id: str, dataset_id: str, artifact_format: str
) -> tuple[dict[str, Any], bytes]:
    """Export the model's latest version, evaluate the file on TEST; the evaluation and file."""
    exported = http.post(f"/v1/models/{model_id}:export", json={"format": artifact_format}).json()
    exported = poll(http, f"/v1/operations/{exported['id']}", lambda b: b["done"], 600)
    assert exported["metadata"]["state"] == "SUCCEEDED", exported["error"]
    started = http.post(
        f"/v1/models/{model_id}/evaluations",
        json={"datasetId": dataset_id, "artifactFormat": artifact_format},
    ).json()
    operation = poll(http, f"/v1/operations/{started['id']}", lambda b: b["done"], 300)
    assert operation["metadata"]["state"] == "SUCCEEDED", operation["error"]
    evaluation = http.get(f"/v1/{operation['response']['name']}").json()
    assert evaluation["artifact"]["sha256"] == exported["response"]["sha256"]
    data = http.get(f"/v1/models/{model_id}/artifacts/{artifact_format}").content
    return evaluation, data


def predict_each(http: httpx.Client, model_id: str, photos: list[bytes]) -> list[dict[str, Any]]:
    """Deploy the model and ask :predict for each photo's detections, all of them."""
    assert http.post(f"/v1/models/{model_id}:deploy").status_code == 200
    return [
        http.post(
            f"/v1/models/{model_id}:predict",
            json={
                "instances": [{"content": base64.b64encode(photo).decode()}],
                "parameters": {"maxPredictions": 100},
            },
        ).json()["predictions"][0]
        for photo in photos
    ]


def as_detections(prediction: dict[str, Any]) -> Detections:
    boxes = np.array(prediction["bboxes"]).reshape(-1, 4)[:, [0, 2, 1, 3]]  # Vertex's order back
    return Detections(
        boxes=boxes.astype(np.float32),
        scores=np.array(prediction["confidences"], dtype=np.float32),
        labels=np.array([int(i) for i in prediction["ids"]], dtype=np.int64),
    )


@pytest.mark.postgres_only
def test_fruit_trains_and_evaluates_through_the_api_agreeing_with_pycocotools(
    live_server_factory: Callable[..., LiveServer], tmp_path: Path
):
    folder = SHARED_DATASETS / "fruit"
    if not (folder / "labels.csv").exists():
        pytest.skip(f"{folder} is absent: the shared datasets are not on this machine")
    server = live_server_factory()  # with its worker child, as `edge-automl serve` runs
    with httpx.Client(base_url=server.url, timeout=60) as http:
        dataset = import_folder(http, folder, tmp_path)

        job = start_training_over_http(http, dataset["id"], FRUIT_BUDGET_MILLI_NODE_HOURS)
        assert job["state"] == "SUCCEEDED", f"{job['error']}\n{server.log()[-3000:]}"
        assert job["costMilliNodeHours"] <= FRUIT_BUDGET_MILLI_NODE_HOURS
        assert job["successfulStopReason"] in ("BUDGET_REACHED", "MODEL_CONVERGED")
        model_id = job["modelId"]

        [summary] = http.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
        assert summary["split"] == "TEST"
        assert summary["imageCount"] == job["imageCounts"]["test"] > 0
        assert summary["ap50"] >= FRUIT_MIN_TEST_MAP50, (summary, job)
        trained = http.get(f"/v1/models/{model_id}/evaluations/{summary['id']}").json()

        # Evaluated again on demand, as an operation: the same file on the same split gives
        # the same figures.
        started = http.post(
            f"/v1/models/{model_id}/evaluations", json={"datasetId": dataset["id"]}
        ).json()
        operation = poll(http, f"/v1/operations/{started['id']}", lambda b: b["done"], 300)
        assert operation["metadata"]["state"] == "SUCCEEDED", operation["error"]
        again = http.get(f"/v1/{operation['response']['name']}").json()
        assert again["cocoMetrics"] == trained["cocoMetrics"]
        assert again["metrics"] == trained["metrics"]
        slider = http.get(
            f"/v1/{again['name']}:threshold", params={"confidence": 0.4, "iou": 0.5}
        ).json()

        # Exported to ONNX, the file scores as the weights do, and once deployed it answers
        # :predict with PyTorch's detections on 20 TEST photos.
        as_onnx, _ = export_and_evaluate(http, model_id, dataset["id"], "onnx")
        for figure in ("AP", "AP50", "AP75"):
            assert as_onnx["cocoMetrics"]["overall"][figure] == pytest.approx(
                trained["cocoMetrics"]["overall"][figure], abs=1e-3
            )
        # TFLite, float32 and int8, exported and evaluated as shipped (LiteRT runs them): the
        # float file scores as the weights do; int8's TEST mAP@0.5 stays close (below).
        tflite = {}
        for artifact_format in ("tflite", "tflite-int8"):
            evaluation, tflite[artifact_format] = export_and_evaluate(
                http, model_id, dataset["id"], artifact_format
            )
            overall = evaluation["cocoMetrics"]["overall"]
            log.info(
                "fruit TEST, %s: AP50 %.4f, AP %.4f",
                artifact_format,
                overall["AP50"],
                overall["AP"],
            )
            if artifact_format == "tflite":
                for figure in ("AP", "AP50", "AP75"):
                    assert overall[figure] == pytest.approx(
                        trained["cocoMetrics"]["overall"][figure], abs=1e-3
                    )
            else:
                # The 2-point goal is shown on 15-minute trainings (bench/README.md). On this
                # short training's 45 TEST images int8's figure swings by several points either
                # way: its close scores reorder under int8's rounding, and one such model's file
                # scored -0.4 and +5.1 points calibrated on 100 or on all 210 TRAIN images (CI
                # once saw -2.8). 5 points still catches what broke before: a saturated range
                # lost everything.
                float_ap50 = trained["cocoMetrics"]["overall"]["AP50"]
                assert overall["AP50"] >= float_ap50 - INT8_MAX_AP50_LOSS, (overall, float_ap50)

        photos = photos_of_test_split(folder)[:20]
        answers = predict_each(http, model_id, photos)

    # PyTorch, ONNX (the :predict answers), LiteRT and MediaPipe on 20 TEST photos: the same
    # top detections, labels and order.
    store = open_blob_store(f"file://{tmp_path / 'blobs'}")
    network = build_model(load_bundle(store.get(f"models/{model_id}/versions/1/model.pt")))
    litert = TflitePredictor(tflite["tflite"])
    labels = ["apple", "banana", "orange"]
    for photo, answer in zip(photos, answers, strict=True):
        image = model_input(photo, network.spec.input_size)[0]
        [expected] = predict_images(network, [image])
        assert_same_detections(expected, as_detections(answer))
        [on_litert] = litert.predict([image])
        assert_same_detections(expected, on_litert)
        on_mediapipe = mediapipe_detections(tflite["tflite"], image, labels)
        assert_mediapipe_agrees(expected, on_mediapipe, size=network.spec.input_size, top=20)

    # pycocotools on the model's own TEST detections, as stored with the evaluation: AP,
    # AP50 and AP75 overall and per label agree with the API's figures within 1e-4.
    table = MatchTable.from_bytes(store.get(evaluation_service.matches_key(model_id, again["id"])))
    truths, found = table.records()
    assert sum(len(d.labels) for d in found) > 0
    labels = list(trained["cocoMetrics"]["perLabel"])
    assert labels == [str(name) for name in table.labels] == ["apple", "banana", "orange"]
    gt, dt = to_coco(truths, found, len(labels))
    theirs = pycoco_stats(gt, dt)
    ours = trained["cocoMetrics"]["overall"]
    for name, position in (("AP", AP), ("AP50", AP50), ("AP75", AP75)):
        assert ours[name] == pytest.approx(theirs[position], abs=1e-4), name
    vertex = {s["slice"]["value"]: s["metrics"] for s in trained["slices"]}
    at50, at75 = THRESHOLDS.index(0.5), THRESHOLDS.index(0.75)
    for k, label in enumerate(labels):
        theirs = pycoco_stats(gt, dt, cat_ids=[k + 1])
        mine = trained["cocoMetrics"]["perLabel"][label]
        for name, position in (("AP", AP), ("AP50", AP50), ("AP75", AP75)):
            assert mine[name] == pytest.approx(theirs[position], abs=1e-4), (label, name)
        entries = vertex[label]["boundingBoxMetrics"]
        assert entries[at50]["meanAveragePrecision"] == pytest.approx(theirs[AP50], abs=1e-4)
        assert entries[at75]["meanAveragePrecision"] == pytest.approx(theirs[AP75], abs=1e-4)
        # The slider at (0.4, 0.5) is a recount of the raw detections.
        tp, fp, num_gt = brute_force_counts(truths, found, k, 0.5, 0.4)
        entry = slider["perLabel"][k]
        assert (entry["truePositiveCount"], entry["falsePositiveCount"]) == (tp, fp)
        assert entry["falseNegativeCount"] == num_gt - tp


@pytest.mark.postgres_only
def test_mediapipe_on_the_exported_tflite_finds_what_predict_answers_for_raccoons(
    live_server_factory: Callable[..., LiveServer], tmp_path: Path
):
    """A phone running MediaPipe Tasks' ObjectDetector on the downloaded TFLite file gets the
    top detections the service's :predict answers (ONNX), on TEST photos of a trained model.
    MediaPipe is given each photo as the model sees it (our one preprocessing), so both
    runtimes see the same pixels."""
    folder = SHARED_DATASETS / "raccoon"
    if not (folder / "labels.csv").exists():
        pytest.skip(f"{folder} is absent: the shared datasets are not on this machine")
    server = live_server_factory()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        dataset = import_folder(http, folder, tmp_path)
        job = start_training_over_http(http, dataset["id"], RACCOON_BUDGET_MILLI_NODE_HOURS)
        assert job["state"] == "SUCCEEDED", f"{job['error']}\n{server.log()[-3000:]}"
        model_id = job["modelId"]
        [summary] = http.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
        log.info("raccoon TEST AP50 %.4f after %s", summary["ap50"], job["progress"])
        assert summary["ap50"] >= RACCOON_MIN_TEST_MAP50, summary
        for artifact_format in ("onnx", "tflite"):
            exported = http.post(
                f"/v1/models/{model_id}:export", json={"format": artifact_format}
            ).json()
            exported = poll(http, f"/v1/operations/{exported['id']}", lambda b: b["done"], 300)
            assert exported["metadata"]["state"] == "SUCCEEDED", exported["error"]
        tflite = http.get(f"/v1/models/{model_id}/artifacts/tflite").content
        photos = photos_of_test_split(folder)[:20]
        answers = predict_each(http, model_id, photos)

    size = load_bundle(
        open_blob_store(f"file://{tmp_path / 'blobs'}").get(
            f"models/{model_id}/versions/1/model.pt"
        )
    ).input_size
    best = []
    for photo, answer in zip(photos, answers, strict=True):
        image = model_input(photo, size)[0]
        on_mediapipe = mediapipe_detections(tflite, image, ["raccoon"])
        assert_mediapipe_agrees(as_detections(answer), on_mediapipe, size=size, top=10)
        best.append(float(on_mediapipe.scores[0]))
    log.info("MediaPipe's best score per photo: %s", [round(b, 3) for b in best])


def import_folder(http: httpx.Client, folder: Path, scratch: Path) -> dict[str, Any]:
    """A dataset holding a shared dataset folder, imported as a zip."""
    dataset = http.post("/v1/datasets", json={"displayName": folder.name}).json()
    archive = zip_folder(folder, scratch / f"{folder.name}.zip")
    imported = http.post(
        f"/v1/datasets/{dataset['id']}:import", files={"file": (f"{folder.name}.zip", archive)}
    ).json()
    operation = poll(http, f"/v1/operations/{imported['id']}", lambda b: b["done"], 300)
    assert operation["metadata"]["state"] == "SUCCEEDED", operation["error"]
    return dataset


def start_training_over_http(http: httpx.Client, dataset_id: str, budget: int) -> dict[str, Any]:
    """Train a LOW_LATENCY model on the dataset within ``budget``; the finished job."""
    created = http.post(
        "/v1/trainingJobs",
        json={
            "datasetId": dataset_id,
            "displayName": "detector",
            "modelType": "MOBILE_TF_LOW_LATENCY_1",
            "budgetMilliNodeHours": budget,
        },
    )
    assert created.status_code == 200, created.text
    path = f"/v1/trainingJobs/{created.json()['id']}"
    return poll(http, path, lambda b: b["state"] in TERMINAL, budget * 3.6 * 1.5 + 180)

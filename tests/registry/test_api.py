"""The registry's read API: models with their versions, evaluations with Vertex's metrics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from app.detector import metrics
from app.detector.types import Evaluation as Scored
from app.kit.ids import new_id
from app.registry import service

LABELS = ["circle", "square"]


def scored_evaluation() -> Scored:
    """A real metrics computation over two images: one perfect and one missed box."""
    truths = [
        metrics.ImageTruth(
            boxes=np.array([[10, 10, 50, 50], [60, 60, 90, 90]], dtype=np.float64),
            labels=np.array([0, 1]),
        ),
        metrics.ImageTruth(
            boxes=np.array([[5, 5, 40, 40]], dtype=np.float64), labels=np.array([0])
        ),
    ]
    detections = [
        metrics.ImageDetections(
            boxes=np.array([[10, 10, 50, 50], [60, 60, 90, 90]], dtype=np.float64),
            scores=np.array([0.9, 0.8]),
            labels=np.array([0, 1]),
        ),
        metrics.ImageDetections(
            boxes=np.zeros((0, 4)), scores=np.zeros(0), labels=np.zeros(0, dtype=np.int64)
        ),
    ]
    coco = metrics.coco_stats(truths, detections, num_labels=len(LABELS))
    return Scored(
        vertex=metrics.vertex_metrics(truths, detections, label_names=LABELS),
        coco=coco.as_dict(),
        coco_per_label={
            name: dict(zip(metrics.STAT_NAMES, map(float, coco.per_label[k]), strict=True))
            for k, name in enumerate(LABELS)
        },
        image_count=2,
        box_count=3,
        detection_count=2,
        seconds=0.01,
    )


def register(client, session_factory, *, name: str = "shapes") -> tuple[str, str, Scored]:
    """A model with one version and one evaluation, stored as the training task stores them."""
    blobs = client.app.state.blobs
    model_id, evaluation_id, data = new_id(), new_id(), b"model bytes"
    weights = service.StoredFile(
        key=service.weights_key(model_id, 1),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    blobs.put(weights.key, data)
    scored = scored_evaluation()
    blobs.put(service.metrics_key(model_id, evaluation_id), service.metrics_document(scored))
    with session_factory.begin() as session:
        _, version = service.create_model(
            session,
            model_id=model_id,
            display_name=name,
            labels=LABELS,
            model_type="MOBILE_TF_LOW_LATENCY_1",
            input_size=320,
            training_job_id="tj1",
            weights=weights,
        )
        service.add_evaluation(
            session,
            evaluation_id=evaluation_id,
            model_version=version,
            dataset_id="ds1",
            split="TEST",
            metrics_blob_key=service.metrics_key(model_id, evaluation_id),
            summary=service.EvaluationSummary.of(scored),
        )
    return model_id, evaluation_id, scored


def test_model_is_listed_and_read_with_its_versions(client, session_factory):
    assert client.get("/v1/models").json() == {"models": [], "nextPageToken": None}
    first, _, _ = register(client, session_factory, name="first")
    second, _, _ = register(client, session_factory, name="second")
    model = client.get(f"/v1/models/{first}").json()
    assert model["name"] == f"models/{first}"
    assert (model["displayName"], model["labels"], model["modelType"], model["inputSize"]) == (
        "first",
        LABELS,
        "MOBILE_TF_LOW_LATENCY_1",
        320,
    )
    assert model["trainingJobId"] == "tj1" and model["latestVersion"] == 1
    [version] = model["versions"]
    assert version["version"] == 1
    assert version["sha256"] == hashlib.sha256(b"model bytes").hexdigest()
    assert version["sizeBytes"] == len(b"model bytes")
    page = client.get("/v1/models", params={"pageSize": 1}).json()
    assert [m["id"] for m in page["models"]] == [second]
    rest = client.get("/v1/models", params={"pageToken": page["nextPageToken"]}).json()
    assert [m["id"] for m in rest["models"]] == [first]


def test_evaluation_has_vertex_metrics_slices_and_coco_figures(client, session_factory):
    model_id, evaluation_id, scored = register(client, session_factory)
    listed = client.get(f"/v1/models/{model_id}/evaluations").json()
    [summary] = listed["evaluations"]
    assert summary["id"] == evaluation_id
    assert summary["metrics"] is None, "the full metrics come with one evaluation"

    evaluation = client.get(f"/v1/models/{model_id}/evaluations/{evaluation_id}").json()
    assert evaluation["name"] == f"models/{model_id}/evaluations/{evaluation_id}"
    assert (evaluation["datasetId"], evaluation["split"], evaluation["modelVersion"]) == (
        "ds1",
        "TEST",
        1,
    )
    assert evaluation["artifact"] == {
        "format": "pytorch",
        "sha256": hashlib.sha256(b"model bytes").hexdigest(),
    }
    assert evaluation["imageCount"] == 2 and evaluation["evaluatedBoundingBoxCount"] == 3
    # Two of three boxes found: the circles' AP@0.5 is 51/101 (101-point), the square's 1.0.
    assert evaluation["ap50"] == scored.coco["AP50"] == pytest.approx((51 / 101 + 1) / 2)
    assert evaluation["ap50To95"] == scored.coco["AP"]
    metrics_ = evaluation["metrics"]
    assert metrics_ == scored.vertex["metrics"]
    assert len(metrics_["boundingBoxMetrics"]) == 23
    assert metrics_["boundingBoxMetrics"][9]["iouThreshold"] == 0.5
    entry = metrics_["boundingBoxMetrics"][9]["confidenceMetrics"][0]
    assert set(entry) == {"confidenceThreshold", "recall", "precision", "f1Score"}
    assert (
        evaluation["boundingBoxMeanAveragePrecision"] == metrics_["boundingBoxMeanAveragePrecision"]
    )
    assert [s["slice"] for s in evaluation["slices"]] == [
        {"dimension": "annotationSpec", "value": label} for label in LABELS
    ]
    assert evaluation["cocoMetrics"]["overall"] == scored.coco
    assert evaluation["cocoMetrics"]["perLabel"]["square"]["AP50"] == pytest.approx(1.0)
    assert evaluation["cocoMetrics"]["perLabel"]["circle"]["AP50"] == pytest.approx(51 / 101)


def test_unknown_models_and_evaluations_are_404(client, session_factory):
    model_id, _, _ = register(client, session_factory)
    for path in (
        "/v1/models/nope",
        "/v1/models/nope/evaluations",
        "/v1/models/nope/evaluations/e1",
        f"/v1/models/{model_id}/evaluations/nope",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["status"] == "NOT_FOUND"
    _, evaluation_id, _ = register(client, session_factory)
    assert client.get(f"/v1/models/{model_id}/evaluations/{evaluation_id}").status_code == 404

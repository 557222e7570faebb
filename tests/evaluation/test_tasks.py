"""Evaluation on demand: a trained model scored on other photos by a worker, the refusals
at request time, and a failed or cancelled evaluation leaving nothing behind."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from tests.datasets.test_api import all_images, blob_files
from tests.training.conftest import start_training
from tests.training.test_api import add_model, error_of

SHAPES = ["circle", "square"]


def evaluate(client, model_id: str, **fields: Any):
    return client.post(f"/v1/models/{model_id}/evaluations", json=fields)


def train_model(client, make_dataset, run_jobs) -> tuple[str, str]:
    """A model trained for two epochs on generated shapes; returns it and its dataset."""
    dataset_id = make_dataset({"TRAIN": 8, "VALIDATION": 2, "TEST": 3})
    job = start_training(client, dataset_id, budgetMilliNodeHours=50)
    assert run_jobs() == 1
    done = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert done["state"] == "SUCCEEDED", done["error"]
    return done["modelId"], dataset_id


def test_a_model_is_evaluated_on_fresh_photos_as_an_operation(client, make_dataset, run_jobs):
    model_id, dataset_id = train_model(client, make_dataset, run_jobs)
    [trained] = client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
    field = make_dataset({"TEST": 4}, name="field photos", first_seed=500)

    response = evaluate(client, model_id, datasetId=field)
    assert response.status_code == 200, response.text
    operation = response.json()
    assert operation["metadata"]["kind"] == "evaluation.evaluate"
    assert operation["done"] is False
    assert run_jobs() == 1
    operation = client.get(f"/v1/operations/{operation['id']}").json()
    assert operation["metadata"]["state"] == "SUCCEEDED", operation["error"]
    assert operation["metadata"]["progress"] == 1.0
    result = operation["response"]
    assert (result["modelId"], result["split"], result["imageCount"]) == (model_id, "TEST", 4)
    assert result["inferenceSeconds"] > 0 and result["metricSeconds"] >= 0

    evaluations = client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
    assert [e["id"] for e in evaluations] == [result["evaluationId"], trained["id"]]
    fresh = client.get(f"/v1/{result['name']}").json()
    model = client.get(f"/v1/models/{model_id}").json()
    assert (fresh["datasetId"], fresh["split"], fresh["imageCount"]) == (field, "TEST", 4)
    assert fresh["artifact"] == {"format": "pytorch", "sha256": model["versions"][0]["sha256"]}
    assert fresh["evaluatedBoundingBoxCount"] == sum(
        i["boxCount"] for i in all_images(client, field)
    )
    assert len(fresh["metrics"]["boundingBoxMetrics"]) == 23

    # The per-image results name the dataset's own images, and render over their pixels.
    path = f"/v1/{result['name']}"
    results = client.get(
        f"{path}/imageResults", params={"onlyErrors": "false", "confidence": 0.05}
    ).json()
    ids = {r["imageId"] for r in results["imageResults"]}
    assert ids == {i["id"] for i in all_images(client, field)}
    image_id = sorted(ids)[0]
    png = client.get(f"{path}/imageResults/{image_id}:render", params={"confidence": 0.05})
    assert png.status_code == 200, png.text
    assert Image.open(io.BytesIO(png.content)).size == (96, 72)

    # Scoring the training's own TEST split again gives the training's figures exactly.
    again = evaluate(client, model_id, datasetId=dataset_id, split="TEST").json()
    assert run_jobs() == 1
    again = client.get(f"/v1/operations/{again['id']}").json()["response"]
    first = client.get(f"/v1/models/{model_id}/evaluations/{trained['id']}").json()
    second = client.get(f"/v1/{again['name']}").json()
    assert second["metrics"] == first["metrics"]
    assert second["cocoMetrics"] == first["cocoMetrics"]
    trained_images = client.get(
        f"/v1/models/{model_id}/evaluations/{trained['id']}/imageResults",
        params={"onlyErrors": "false"},
    ).json()["imageResults"]
    assert {r["imageId"] for r in trained_images} == {
        i["id"] for i in all_images(client, dataset_id) if i["split"] == "TEST"
    }


def test_a_request_the_model_cannot_answer_is_refused_naming_the_problem(
    client, make_dataset, session_factory
):
    model_id = add_model(
        session_factory, client, labels=SHAPES, model_type="MOBILE_TF_LOW_LATENCY_1"
    )
    dataset_id = make_dataset({"TRAIN": 3, "TEST": 2})
    error_of(evaluate(client, "nope", datasetId=dataset_id), 404, "NOT_FOUND")
    error_of(evaluate(client, model_id, datasetId="nope"), 404, "NOT_FOUND")
    error = error_of(
        evaluate(client, model_id, datasetId=dataset_id, split="VALIDATION"),
        400,
        "INVALID_ARGUMENT",
    )
    assert "no labelled images in its VALIDATION split" in error["message"]
    error = error_of(
        evaluate(client, model_id, datasetId=dataset_id, artifactFormat="onnx"),
        400,
        "FAILED_PRECONDITION",
    )
    assert "no onnx file" in error["message"] and ":export" in error["message"]
    error = error_of(
        evaluate(client, model_id, datasetId=dataset_id, modelVersion=3), 400, "INVALID_ARGUMENT"
    )
    assert "no version 3" in error["message"]
    error_of(
        evaluate(client, model_id, datasetId=dataset_id, artifactFormat="keras"),
        400,
        "INVALID_ARGUMENT",
    )
    # A box the model could never find: refused with the label named.
    [image] = [i for i in all_images(client, dataset_id) if i["split"] == "TEST"][:1]
    box = {"label": "triangle", "xMin": 0.1, "yMin": 0.1, "xMax": 0.5, "yMax": 0.5}
    url = f"/v1/datasets/{dataset_id}/images/{image['id']}/annotations"
    assert client.put(url, json={"boxes": [box]}).status_code == 200
    error = error_of(evaluate(client, model_id, datasetId=dataset_id), 400, "INVALID_ARGUMENT")
    assert "triangle" in error["message"] and "datasetId" in str(error["details"])
    kinds = [o["metadata"]["kind"] for o in client.get("/v1/operations").json()["operations"]]
    assert "evaluation.evaluate" not in kinds, "nothing was queued"


def queue_for_stand_in(client, make_dataset, session_factory) -> tuple[str, dict[str, Any]]:
    """A model whose file is not a detector, and an evaluation of it queued."""
    model_id = add_model(
        session_factory, client, labels=SHAPES, model_type="MOBILE_TF_LOW_LATENCY_1"
    )
    dataset_id = make_dataset({"TRAIN": 3, "TEST": 2})
    return model_id, evaluate(client, model_id, datasetId=dataset_id).json()


def test_a_model_file_that_cannot_be_scored_fails_and_leaves_nothing(
    client, make_dataset, run_jobs, session_factory, settings
):
    model_id, operation = queue_for_stand_in(client, make_dataset, session_factory)
    assert run_jobs() == 1
    operation = client.get(f"/v1/operations/{operation['id']}").json()
    assert operation["metadata"]["state"] == "FAILED"
    assert operation["metadata"]["attempts"] == 1, "a refusal is not retried"
    assert operation["error"]["status"] == "FAILED_PRECONDITION"
    assert "cannot be evaluated" in operation["error"]["message"]
    assert client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"] == []
    assert [f for f in blob_files(settings) if "/evaluations/" in f] == []


def test_a_cancelled_evaluation_never_runs(
    client, make_dataset, run_jobs, session_factory, settings
):
    model_id, operation = queue_for_stand_in(client, make_dataset, session_factory)
    cancelled = client.post(f"/v1/operations/{operation['id']}:cancel").json()
    assert cancelled["metadata"]["state"] == "CANCELLED"
    assert run_jobs() == 0
    assert client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"] == []
    assert [f for f in blob_files(settings) if "/evaluations/" in f] == []

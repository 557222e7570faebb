"""Export over HTTP: the operation, the stored file with its SHA-256, download with ETag, and
evaluating the exported file."""

from __future__ import annotations

import hashlib

import pytest

from app.kit.ids import new_id
from app.registry import service
from tests.datasets.test_api import blob_files
from tests.detector.test_export import spread_model_file
from tests.training.conftest import SHAPES
from tests.training.test_api import error_of


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return spread_model_file(SHAPES)


def register_file(client, session_factory, data: bytes) -> str:
    """A model whose version 1 is ``data``."""
    model_id = new_id()
    weights = service.StoredFile(
        key=service.weights_key(model_id, 1),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    client.app.state.blobs.put(weights.key, data)
    with session_factory.begin() as session:
        service.create_model(
            session,
            model_id=model_id,
            display_name="spread",
            labels=list(SHAPES),
            model_type="MOBILE_TF_LOW_LATENCY_1",
            input_size=320,
            training_job_id=None,
            weights=weights,
        )
    return model_id


def export(client, run_jobs, model_id: str, **fields) -> dict:
    response = client.post(f"/v1/models/{model_id}:export", json={"format": "onnx", **fields})
    assert response.status_code == 200, response.text
    assert run_jobs() == 1
    return client.get(f"/v1/operations/{response.json()['id']}").json()


def test_export_stores_a_file_downloaded_with_its_hash_as_etag(
    client, run_jobs, session_factory, model_file, settings
):
    model_id = register_file(client, session_factory, model_file)
    operation = export(client, run_jobs, model_id)
    assert operation["metadata"]["state"] == "SUCCEEDED", operation["error"]
    assert operation["metadata"]["kind"] == "registry.export"
    result = operation["response"]
    assert (result["modelId"], result["modelVersion"], result["format"]) == (model_id, 1, "onnx")

    [version] = client.get(f"/v1/models/{model_id}").json()["versions"]
    [artifact] = version["artifacts"]
    assert artifact["format"] == "onnx" and artifact["sha256"] == result["sha256"]
    assert artifact["details"]["opset"] == 17 and artifact["details"]["labels"] == list(SHAPES)

    download = client.get(f"/v1/models/{model_id}/artifacts/onnx")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == result["sha256"]
    assert len(download.content) == result["sizeBytes"] == artifact["sizeBytes"]
    assert download.headers["etag"] == f'"{result["sha256"]}"'
    assert 'filename="model.onnx"' in download.headers["content-disposition"]
    cached = client.get(
        f"/v1/models/{model_id}/artifacts/onnx", headers={"If-None-Match": download.headers["etag"]}
    )
    assert cached.status_code == 304 and cached.content == b""
    weights = client.get(f"/v1/models/{model_id}/artifacts/pytorch", params={"modelVersion": 1})
    assert weights.content == model_file

    # Exporting again gives the same file, not a second one.
    again = export(client, run_jobs, model_id)
    assert again["response"]["sha256"] == result["sha256"]
    files = [f for f in blob_files(settings) if f.startswith(f"models/{model_id}/")]
    assert sorted(files) == [
        f"models/{model_id}/versions/1/model.onnx",
        f"models/{model_id}/versions/1/model.pt",
    ]


def test_the_exported_file_is_evaluated_as_shipped(
    client, run_jobs, session_factory, model_file, make_dataset
):
    model_id = register_file(client, session_factory, model_file)
    dataset_id = make_dataset({"TRAIN": 2, "TEST": 3})
    response = client.post(
        f"/v1/models/{model_id}/evaluations",
        json={"datasetId": dataset_id, "artifactFormat": "onnx"},
    )
    error = error_of(response, 400, "FAILED_PRECONDITION")
    assert "export it first" in error["message"]
    sha256 = export(client, run_jobs, model_id)["response"]["sha256"]
    scores = {}
    for artifact in ("onnx", "pytorch"):
        started = client.post(
            f"/v1/models/{model_id}/evaluations",
            json={"datasetId": dataset_id, "artifactFormat": artifact},
        ).json()
        assert run_jobs() == 1
        name = client.get(f"/v1/operations/{started['id']}").json()["response"]["name"]
        scores[artifact] = client.get(f"/v1/{name}").json()
    assert scores["onnx"]["artifact"] == {"format": "onnx", "sha256": sha256}
    assert scores["onnx"]["detectionCount"] == scores["pytorch"]["detectionCount"]
    for figure in ("AP", "AP50", "AP75"):
        assert scores["onnx"]["cocoMetrics"]["overall"][figure] == pytest.approx(
            scores["pytorch"]["cocoMetrics"]["overall"][figure], abs=1e-3
        )


def test_tflite_export_is_downloaded_and_evaluated_as_shipped(
    client, run_jobs, session_factory, model_file, make_dataset
):
    model_id = register_file(client, session_factory, model_file)
    operation = export(client, run_jobs, model_id, format="tflite")
    assert operation["metadata"]["state"] == "SUCCEEDED", operation["error"]
    result = operation["response"]
    [version] = client.get(f"/v1/models/{model_id}").json()["versions"]
    [artifact] = version["artifacts"]
    assert artifact["format"] == "tflite" and artifact["sha256"] == result["sha256"]
    details = artifact["details"]
    assert details["input"]["shape"] == [1, 320, 320, 3] and details["input"]["dtype"] == "float32"
    assert details["labels"] == list(SHAPES) and details["interpreterThreads"] == 1
    download = client.get(f"/v1/models/{model_id}/artifacts/tflite")
    assert hashlib.sha256(download.content).hexdigest() == result["sha256"]
    assert 'filename="model.tflite"' in download.headers["content-disposition"]

    dataset_id = make_dataset({"TRAIN": 2, "TEST": 3})
    scores = {}
    for artifact_format in ("tflite", "pytorch"):
        started = client.post(
            f"/v1/models/{model_id}/evaluations",
            json={"datasetId": dataset_id, "artifactFormat": artifact_format},
        ).json()
        assert run_jobs() == 1
        name = client.get(f"/v1/operations/{started['id']}").json()["response"]["name"]
        scores[artifact_format] = client.get(f"/v1/{name}").json()
    assert scores["tflite"]["artifact"] == {"format": "tflite", "sha256": result["sha256"]}
    for figure in ("AP", "AP50", "AP75"):
        assert scores["tflite"]["cocoMetrics"]["overall"][figure] == pytest.approx(
            scores["pytorch"]["cocoMetrics"]["overall"][figure], abs=1e-3
        )


def test_what_cannot_be_exported_is_refused_with_the_reason(
    client, run_jobs, session_factory, settings
):
    model_id = register_file(client, session_factory, b"not a detector")
    error = error_of(
        client.post(f"/v1/models/{model_id}:export", json={"format": "tflite-int8"}),
        400,
        "FAILED_PRECONDITION",
    )
    assert "calibrated on the images a model was trained on" in error["message"]
    # A file that is not a model fails the operation with the reason, and stores nothing.
    operation = export(client, run_jobs, model_id, format="tflite")
    assert operation["metadata"]["state"] == "FAILED"
    assert "cannot be exported to tflite" in operation["error"]["message"]
    assert [f for f in blob_files(settings) if f.startswith(f"models/{model_id}/")] == [
        f"models/{model_id}/versions/1/model.pt"
    ]
    error_of(
        client.post(f"/v1/models/{model_id}:export", json={"format": "keras"}),
        400,
        "INVALID_ARGUMENT",
    )
    error = error_of(
        client.post(f"/v1/models/{model_id}:export", json={"format": "onnx", "modelVersion": 4}),
        400,
        "INVALID_ARGUMENT",
    )
    assert "no version 4" in error["message"]
    error_of(client.post("/v1/models/nope:export", json={"format": "onnx"}), 404, "NOT_FOUND")
    error = error_of(client.get(f"/v1/models/{model_id}/artifacts/onnx"), 404, "NOT_FOUND")
    assert ":export" in error["message"]

    failed = export(client, run_jobs, model_id)
    assert failed["metadata"]["state"] == "FAILED" and failed["metadata"]["attempts"] == 1
    assert failed["error"]["status"] == "FAILED_PRECONDITION"
    assert "cannot be exported" in failed["error"]["message"]
    assert client.get(f"/v1/models/{model_id}").json()["versions"][0]["artifacts"] == []
    assert not [f for f in blob_files(settings) if f.endswith(".onnx")]

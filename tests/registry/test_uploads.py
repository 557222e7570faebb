"""Models from a user's own .tflite file: checked in LiteRT, refused files recorded on the
model (never a 500), new versions, and what an uploaded model can and cannot do."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.training.test_api import error_of

LABELS = ["red", "green", "blue"]  # tests/fixtures/tflite.py's model


def upload(client, data: bytes, **fields) -> object:
    form = {"displayName": "bring_your_own", **fields}
    return client.post("/v1/models", files={"file": ("model.tflite", data)}, data=form)


def test_an_uploaded_detector_becomes_a_publishable_model(client, float_tflite):
    response = upload(client, float_tflite, tags=["automl", "legacy"])
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["source"], model["modelType"], model["labels"], model["inputSize"]) == (
        "upload",
        "CUSTOM_TFLITE",
        LABELS,
        320,
    )
    assert model["tags"] == ["automl", "legacy"]
    assert model["state"] == {"published": False, "validationError": None}
    digest = hashlib.sha256(float_tflite).hexdigest()
    assert model["modelHash"] == digest
    [version] = model["versions"]
    assert (version["format"], version["sha256"]) == ("tflite", digest)
    assert [a["format"] for a in version["artifacts"]] == ["tflite"]
    model_id = model["id"]
    downloaded = client.get(f"/v1/models/{model_id}/artifacts/tflite")
    assert downloaded.content == float_tflite
    assert client.post(f"/v1/models/{model_id}:publish").json()["state"]["published"] is True
    answer = client.get("/v1/models/bring_your_own:download").json()
    assert (answer["modelHash"], answer["modelVersion"]) == (digest, 1)


def test_a_file_that_is_not_a_detector_is_recorded_as_a_validation_error(client):
    response = upload(client, b"this is not a flatbuffer")
    assert response.status_code == 201, response.text
    model = response.json()
    error = model["state"]["validationError"]
    assert error["code"] == 3 and "NOT_TFLITE" in error["message"]
    assert model["labels"] == [] and model["modelHash"] is None
    refused = client.post(f"/v1/models/{model['id']}:publish")
    message = error_of(refused, 400, "FAILED_PRECONDITION")["message"]
    assert "cannot be published" in message and "NOT_TFLITE" in message
    listed = client.get("/v1/models", params={"filter": "display_name = bring_your_own"})
    assert [m["id"] for m in listed.json()["models"]] == [model["id"]]


def test_a_later_good_version_clears_the_error_and_versions_number_on(client, float_tflite):
    model_id = upload(client, b"garbage").json()["id"]
    response = client.post(
        f"/v1/models/{model_id}/versions", files={"file": ("v2.tflite", float_tflite)}
    )
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["state"]["validationError"] is None
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert model["labels"] == LABELS
    assert client.post(f"/v1/models/{model_id}:publish").json()["publishedVersion"] == 2


def test_json_names_the_file_where_imports_may_read(client, app, float_tflite, tmp_path):
    root = tmp_path / "imports"
    root.mkdir()
    (root / "model.tflite").write_bytes(float_tflite)
    app.state.settings = app.state.settings.model_copy(update={"import_root": root})
    body = {"displayName": "from_disk", "tfliteModel": {"gcsTfliteUri": str(root / "model.tflite")}}
    response = client.post("/v1/models", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["modelHash"] == hashlib.sha256(float_tflite).hexdigest()
    outside = {"displayName": "x", "tfliteModel": {"gcsTfliteUri": str(Path("/etc/passwd"))}}
    refused = client.post("/v1/models", json=outside)
    assert "gcsTfliteUri" in error_of(refused, 400, "INVALID_ARGUMENT")["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"displayName": "has space"}, "displayName"), ({"tags": ["bad/tag"]}, "tags")],
)
def test_bad_fields_are_refused_and_nothing_is_made(client, float_tflite, fields, field):
    response = upload(client, float_tflite, **fields)
    assert field in error_of(response, 400, "INVALID_ARGUMENT")["message"]
    assert client.get("/v1/models").json()["models"] == []


def test_an_oversized_file_is_refused_and_nothing_is_stored(client, app, float_tflite):
    app.state.settings = app.state.settings.model_copy(update={"max_tflite_bytes": 4096})
    response = upload(client, float_tflite)
    assert "the limit is 4096" in error_of(response, 413, "OUT_OF_RANGE")["message"]
    assert client.get("/v1/models").json()["models"] == []
    assert list(client.app.state.blobs.list("models/")) == []


def test_uploaded_models_take_files_not_training_and_trained_ones_the_reverse(
    client, session_factory, float_tflite
):
    from tests.registry.test_api import register

    uploaded = upload(client, float_tflite).json()["id"]
    refused = client.post(f"/v1/models/{uploaded}:export", json={"format": "onnx"})
    assert "uploaded as tflite" in error_of(refused, 400, "FAILED_PRECONDITION")["message"]
    trained, _ = register(client, session_factory)
    refused = client.post(
        f"/v1/models/{trained}/versions", files={"file": ("m.tflite", float_tflite)}
    )
    assert "trained here" in error_of(refused, 400, "FAILED_PRECONDITION")["message"]

"""Serving over HTTP: deploy an exported model, predict in Vertex's JSON or from an upload,
the refusals, undeploy."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from app.detector.bundle import load_bundle
from app.detector.data import model_input
from app.detector.predict import build_model, predict_images
from tests.detector.test_export import spread_model_file
from tests.registry.test_export import export, register_file
from tests.training.conftest import SHAPES, make_scene
from tests.training.test_api import error_of


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return spread_model_file(SHAPES)


@pytest.fixture
def deployed(client, run_jobs, session_factory, model_file) -> str:
    model_id = register_file(client, session_factory, model_file)
    assert export(client, run_jobs, model_id)["metadata"]["state"] == "SUCCEEDED"
    response = client.post(f"/v1/models/{model_id}:deploy")
    assert response.status_code == 200, response.text
    return model_id


def jpeg(seed: int) -> bytes:
    return make_scene(seed, size=(200, 150))[0]


def test_predict_answers_in_vertex_json_as_pytorch_detects(client, deployed, model_file):
    images = [jpeg(1), jpeg(2)]
    body = {
        "instances": [
            {"content": base64.b64encode(data).decode(), "mimeType": "image/jpeg"}
            for data in images
        ],
        "parameters": {"confidenceThreshold": 0.3, "maxPredictions": 5},
    }
    response = client.post(f"/v1/models/{deployed}:predict", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["deployedModelId"] == f"{deployed}-v1" and answer["modelVersion"] == 1
    network = build_model(load_bundle(model_file))
    for data, prediction in zip(images, answer["predictions"], strict=True):
        [expected] = predict_images(network, [model_input(data, 320)[0]])
        keep = expected.scores >= 0.3
        count = min(5, int(keep.sum()))
        assert len(prediction["confidences"]) == count > 0
        assert prediction["confidences"] == sorted(prediction["confidences"], reverse=True)
        np.testing.assert_allclose(prediction["confidences"], expected.scores[:count], atol=1e-5)
        assert prediction["displayNames"] == [SHAPES[i] for i in expected.labels[:count]]
        assert prediction["ids"] == [str(i) for i in expected.labels[:count]]
        # Vertex's box order: xMin, xMax, yMin, yMax.
        x_min, y_min, x_max, y_max = expected.boxes[0]
        np.testing.assert_allclose(prediction["bboxes"][0], [x_min, x_max, y_min, y_max], atol=1e-4)


def test_a_multipart_image_gives_the_same_answer(client, deployed):
    data = jpeg(3)
    as_json = client.post(
        f"/v1/models/{deployed}:predict",
        json={"instances": [{"content": base64.b64encode(data).decode()}]},
    ).json()
    uploaded = client.post(
        f"/v1/models/{deployed}:predict", files={"file": ("photo.jpg", data, "image/jpeg")}
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == as_json
    assert len(as_json["predictions"][0]["confidences"]) == 10, "Vertex's default maxPredictions"
    fewer = client.post(
        f"/v1/models/{deployed}:predict",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        data={"maxPredictions": "2"},
    ).json()
    assert fewer["predictions"][0]["confidences"] == as_json["predictions"][0]["confidences"][:2]


def test_bad_requests_are_refused_naming_the_problem(client, deployed, settings):
    path = f"/v1/models/{deployed}:predict"
    good = base64.b64encode(jpeg(4)).decode()
    cases = [
        ({"instances": [{"content": good}, {"content": "not base64!"}]}, "instances[1].content"),
        ({"instances": [{"content": base64.b64encode(b"text").decode()}]}, "not an image"),
        ({"instances": []}, "instances"),
        (
            {"instances": [{"content": good}], "parameters": {"maxPredictions": 501}},
            "maxPredictions",
        ),
        (
            {"instances": [{"content": good}], "parameters": {"confidenceThreshold": 2}},
            "confidenceThreshold",
        ),
    ]
    for body, named in cases:
        error = error_of(client.post(path, json=body), 400, "INVALID_ARGUMENT")
        assert named in error["message"] + str(error["details"]), body
    error_of(
        client.post(path, content=b"raw", headers={"content-type": "image/jpeg"}),
        400,
        "INVALID_ARGUMENT",
    )
    huge = Image.new("RGB", (5000, 5000))
    out = io.BytesIO()
    huge.save(out, format="PNG")
    limited = client.app.state.settings.model_copy(update={"max_image_pixels": 1_000_000})
    client.app.state.settings = limited
    try:
        body = {"instances": [{"content": base64.b64encode(out.getvalue()).decode()}]}
        error = error_of(client.post(path, json=body), 413, "OUT_OF_RANGE")
        assert "5000x5000" in error["message"]
    finally:
        client.app.state.settings = settings


def test_predicting_an_undeployed_model_says_what_to_do(
    client, run_jobs, session_factory, model_file
):
    model_id = register_file(client, session_factory, model_file)
    body = {"instances": [{"content": base64.b64encode(jpeg(5)).decode()}]}
    error = error_of(client.post(f"/v1/models/{model_id}:predict", json=body), 409, "ABORTED")
    assert ":deploy" in error["message"]
    error = error_of(client.post(f"/v1/models/{model_id}:deploy"), 400, "FAILED_PRECONDITION")
    assert ":export" in error["message"]
    error_of(client.post("/v1/models/nope:predict", json=body), 404, "NOT_FOUND")

    assert export(client, run_jobs, model_id)["metadata"]["state"] == "SUCCEEDED"
    deployed = client.post(f"/v1/models/{model_id}:deploy", json={"modelVersion": 1}).json()
    assert deployed["modelVersion"] == 1 and len(deployed["artifactSha256"]) == 64
    assert client.post(f"/v1/models/{model_id}:predict", json=body).status_code == 200
    assert client.post(f"/v1/models/{model_id}:undeploy").json() == deployed
    error_of(client.post(f"/v1/models/{model_id}:predict", json=body), 409, "ABORTED")
    error_of(client.post(f"/v1/models/{model_id}:undeploy"), 400, "FAILED_PRECONDITION")


def test_the_operator_may_deploy_on_demand(client, run_jobs, session_factory, model_file, settings):
    model_id = register_file(client, session_factory, model_file)
    assert export(client, run_jobs, model_id)["metadata"]["state"] == "SUCCEEDED"
    client.app.state.settings = settings.model_copy(update={"predict_deploys_on_demand": True})
    try:
        body = {"instances": [{"content": base64.b64encode(jpeg(6)).decode()}]}
        response = client.post(f"/v1/models/{model_id}:predict", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["deployedModelId"] == f"{model_id}-v1"
    finally:
        client.app.state.settings = settings

"""The registry's read API: models with their versions."""

from __future__ import annotations

import hashlib

from app.kit.ids import new_id
from app.registry import service

LABELS = ["circle", "square"]


def register(client, session_factory, *, name: str = "shapes") -> tuple[str, object]:
    """A model with one stored version, as the training task registers it."""
    blobs = client.app.state.blobs
    model_id, data = new_id(), b"model bytes"
    weights = service.StoredFile(
        key=service.weights_key(model_id, 1),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    blobs.put(weights.key, data)
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
        session.expunge(version)
    return model_id, version


def test_model_is_listed_and_read_with_its_versions(client, session_factory):
    assert client.get("/v1/models").json() == {"models": [], "nextPageToken": None}
    first, _ = register(client, session_factory, name="first")
    second, _ = register(client, session_factory, name="second")
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


def test_unknown_models_are_404(client, session_factory):
    register(client, session_factory)
    for path in ("/v1/models/nope", "/v1/models/nope/evaluations", "/v1/models/a:b"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["status"] == "NOT_FOUND"

"""Fixtures for batch prediction tests: a real detector exported to ONNX and registered,
photos and input files under the import root, a worker, and generated datasets."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from app.detector.export import ExportedFile, export_onnx
from app.registry import service as registry_service
from tests.detector.test_export import spread_model_file
from tests.registry.test_export import register_file
from tests.training.conftest import SHAPES, make_dataset, make_scene, run_jobs  # noqa: F401

CHUNK_SIZE = 2


@pytest.fixture(scope="session")
def shapes_model() -> bytes:
    """A real detector of circles and squares (untrained, with well-spread scores)."""
    return spread_model_file(SHAPES)


@pytest.fixture(scope="session")
def shapes_onnx(shapes_model: bytes) -> ExportedFile:
    return export_onnx(shapes_model)


@pytest.fixture
def import_root(tmp_path: Path) -> Path:
    root = tmp_path / "inputs"
    root.mkdir()
    return root


@pytest.fixture
def settings(settings, import_root):
    """Small chunks, so a few images make several result files; local inputs allowed."""
    return settings.model_copy(
        update={"batch_prediction_chunk_size": CHUNK_SIZE, "import_root": import_root}
    )


def register_exported(client, session_factory, model_file: bytes, onnx: ExportedFile) -> str:
    """A model whose version 1 is ``model_file``, exported to ONNX as the export task
    records it; returns its id."""
    model_id = register_file(client, session_factory, model_file)
    stored = registry_service.StoredFile(
        key=registry_service.artifact_key(model_id, 1, "onnx"),
        sha256=hashlib.sha256(onnx.data).hexdigest(),
        size_bytes=len(onnx.data),
    )
    client.app.state.blobs.put(stored.key, onnx.data)
    with session_factory.begin() as session:
        version = registry_service.latest_version(session, model_id=model_id)
        registry_service.add_artifact(
            session, version=version, format="onnx", stored=stored, details=onnx.details
        )
    return model_id


@pytest.fixture
def model_id(client, session_factory, shapes_model, shapes_onnx) -> str:
    return register_exported(client, session_factory, shapes_model, shapes_onnx)


def photo(seed: int) -> bytes:
    return make_scene(seed, size=(120, 90), shapes=2)[0]


def write_photos(folder: Path, seeds: range | list[int]) -> list[str]:
    """JPEGs named {seed}.jpg in ``folder``; their absolute paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"{seed}.jpg"
        path.write_bytes(photo(seed))
        paths.append(str(path))
    return paths


def jsonl(contents: list[str]) -> str:
    return "".join(json.dumps({"content": c, "mimeType": "image/jpeg"}) + "\n" for c in contents)


def create(client, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/batchPredictionJobs", json={"displayName": "batch", **fields})
    assert response.status_code == 200, response.text
    return response.json()


def file_input(path: Path | str, instances_format: str = "jsonl") -> dict[str, Any]:
    return {"instancesFormat": instances_format, "gcsSource": {"uris": [str(path)]}}


def results(client, batch_job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/batchPredictionJobs/{batch_job_id}/predictions")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    return [json.loads(line) for line in response.text.splitlines()]


def online_predictions(client, model_id: str, images: list[bytes], **parameters: Any) -> list:
    """What :predict answers for the images (the model deployed first)."""
    deployed = client.post(f"/v1/models/{model_id}:deploy")
    assert deployed.status_code == 200, deployed.text
    body = {
        "instances": [{"content": base64.b64encode(data).decode()} for data in images],
        "parameters": parameters,
    }
    response = client.post(f"/v1/models/{model_id}:predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]

"""Imports from Cloud Storage and a Cloud Storage blob store, against the emulator over the wire."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from google.cloud import storage

from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.kit.blobs import BlobStore, open_blob_store
from app.main import create_app
from tests.datasets.conftest import make_image
from tests.datasets.test_api import all_images, create_dataset


@pytest.fixture
def gcs_store(gcs_bucket: str) -> BlobStore:
    return open_blob_store(f"gs://{gcs_bucket}/store")


@pytest.fixture
def gcs_client_app(settings, engine, session_factory, gcs_store) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine=engine, blobs=gcs_store)) as client:
        yield client


@pytest.fixture
def run_gcs_jobs(settings, session_factory, gcs_store):  # type: ignore[no-untyped-def]
    def run() -> int:
        worker = Worker(
            settings=settings,
            session_factory=session_factory,
            registry=default_registry(),
            blobs=gcs_store,
        )
        return worker.run(stop_when_idle=True)

    return run


def test_import_index_file_by_gs_uri_with_relative_and_absolute_images(
    gcs_client_app, run_gcs_jobs, gcs_client: storage.Client, gcs_bucket: str
):
    bucket = gcs_client.bucket(gcs_bucket)
    bucket.blob("data/photos/a.jpg").upload_from_string(make_image(1))
    bucket.blob("data/photos/b.jpg").upload_from_string(make_image(2))
    bucket.blob("data/labels.csv").upload_from_string(
        "TRAIN,photos/a.jpg,cat,0.1,0.1,,,0.5,0.5,,\n"
        f"VALIDATION,gs://{gcs_bucket}/data/photos/b.jpg,dog,0.2,0.2,,,0.6,0.6,,\n"
        "TEST,photos/missing.jpg,dog,0.2,0.2,,,0.6,0.6,,\n"
    )
    client = gcs_client_app
    dataset_id = create_dataset(client)
    response = client.post(
        f"/v1/datasets/{dataset_id}:import", json={"uris": [f"gs://{gcs_bucket}/data/labels.csv"]}
    )
    assert response.status_code == 200, response.text
    run_gcs_jobs()
    operation = client.get(f"/v1/operations/{response.json()['id']}").json()
    result = operation["response"]
    assert result["importedImageCount"] == 2
    assert [(e["row"], e["field"]) for e in result["errors"]] == [(3, "IMAGE_URI")]
    assert "missing.jpg" in result["errors"][0]["message"]
    stored = [b.name for b in bucket.list_blobs(prefix="store/images/")]
    assert len(stored) == 2

    # The CSV export names the blob store's gs:// objects, which the importer reads back.
    exported = client.get(f"/v1/datasets/{dataset_id}:export", params={"format": "csv"}).text
    assert exported.count(f"gs://{gcs_bucket}/store/images/") == 2
    copy = create_dataset(client, "copy")
    response = client.post(
        f"/v1/datasets/{copy}:import", files={"file": ("export.csv", exported.encode())}
    )
    run_gcs_jobs()
    again = client.get(f"/v1/operations/{response.json()['id']}").json()["response"]
    assert again["errorCount"] == 0 and again["newImageCount"] == 0
    assert sorted((i["sha256"], i["split"]) for i in all_images(client, copy)) == sorted(
        (i["sha256"], i["split"]) for i in all_images(client, dataset_id)
    )


def test_missing_index_object_fails_the_operation(gcs_client_app, run_gcs_jobs, gcs_bucket):
    client = gcs_client_app
    dataset_id = create_dataset(client)
    response = client.post(
        f"/v1/datasets/{dataset_id}:import", json={"uris": [f"gs://{gcs_bucket}/nothing.csv"]}
    )
    run_gcs_jobs()
    operation = client.get(f"/v1/operations/{response.json()['id']}").json()
    assert operation["metadata"]["state"] == "FAILED"
    assert operation["error"]["status"] == "INVALID_ARGUMENT"
    assert "nothing.csv" in operation["error"]["message"]

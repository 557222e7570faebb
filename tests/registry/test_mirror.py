"""The Firebase ML mirror: publishing, unpublishing and deleting a model reach Firebase ML
through firebase-admin, over the wire to a stand-in of Firebase ML and the storage emulator;
failures are retried by the queue and shown on the model, and never undo our own publish."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import SettingsError, load_settings
from app.db.job import Job
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.main import create_app
from app.registry import mirror
from tests.detector.test_tflite_check import relabelled
from tests.fixtures.gcs import write_service_account_file
from tests.registry.test_api import register
from tests.registry.test_publishing import add_tflite, add_version

PROJECT = "edge-mirror-test"


@pytest.fixture
def settings(settings, firebase_ml, gcs_bucket, tmp_path):
    """The test settings with the mirror on: the stand-in, a fresh emulator bucket, and a
    service-account key whose token_uri is the stand-in's."""
    key = write_service_account_file(
        tmp_path / "firebase.json", project_id=PROJECT, token_uri=firebase_ml.token_uri
    )
    return load_settings(
        **{
            **settings.model_dump(),
            "firebase_mirror_project": PROJECT,
            "firebase_mirror_bucket": gcs_bucket,
            "firebase_credentials_file": key,
            "firebase_ml_base_url": firebase_ml.url,
        }
    )


@pytest.fixture(scope="module")
def files(float_tflite: bytes) -> tuple[bytes, bytes]:
    """Two different real TFLite files (the second with its label file rewritten)."""
    return float_tflite, relabelled(float_tflite, "red\ngreen\nblue\n\n")


def publish(client, session_factory, data: bytes, *, name: str = "shapes") -> tuple[str, str]:
    """A model whose version 1 has ``data`` as its TFLite file, published; its id and hash."""
    model_id, _ = register(client, session_factory, name=name)
    sha256 = add_tflite(client, session_factory, model_id, 1, data)
    response = client.post(f"/v1/models/{model_id}:publish")
    assert response.status_code == 200, response.text
    return model_id, sha256


def mirror_of(client, model_id: str) -> dict[str, Any]:
    model = client.get(f"/v1/models/{model_id}").json()
    return model["firebaseMirror"]


def mirror_jobs(session_factory) -> list[Job]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(Job).where(Job.kind == mirror.MIRROR_KIND).order_by(Job.created_at)
            )
        )


def run_one_job(settings, session_factory) -> None:
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    assert worker.run(max_jobs=1, stop_when_idle=True) == 1


def test_publishing_creates_and_publishes_the_model_in_firebase_ml(
    client, session_factory, run_jobs, firebase_ml, gcs_client, gcs_bucket, files
):
    model_id, sha256 = publish(client, session_factory, files[0])
    published = client.get(f"/v1/models/{model_id}").json()
    assert published["firebaseMirror"]["state"] == "PENDING"
    assert published["state"]["published"] is True
    [job] = mirror_jobs(session_factory)
    assert job.payload == {"modelId": model_id} and job.max_attempts == mirror.MAX_ATTEMPTS

    assert run_jobs() == 1
    there = firebase_ml.model_named("shapes")
    assert there is not None
    assert there["state"] == {"published": True}
    assert there["modelHash"] == sha256
    assert there["tfliteModel"] == {
        "gcsTfliteUri": f"gs://{gcs_bucket}/Firebase/ML/Models/{model_id}-v1.tflite",
        "sizeBytes": str(len(files[0])),
    }
    assert set(there["tags"]) == {"edge-automl", model_id}
    stored = gcs_client.bucket(gcs_bucket).blob(f"Firebase/ML/Models/{model_id}-v1.tflite")
    assert stored.download_as_bytes() == files[0]
    # Firebase answered some writes with operations still running: the SDK polled them.
    assert firebase_ml.operation_reads > 0

    model = client.get(f"/v1/models/{model_id}").json()
    assert model["firebaseMirror"] == {
        "state": "SYNCED",
        "firebaseModel": there["name"],
        "modelVersion": 1,
        "modelHash": sha256,
        "published": True,
        "error": None,
        "attempts": 1,
        "updateTime": model["firebaseMirror"]["updateTime"],
    }
    # The mirror's record is not a change a client makes: an etag read before still holds.
    assert model["etag"] == published["etag"]


def test_a_newly_published_version_replaces_the_file_there(
    client, session_factory, run_jobs, firebase_ml, files
):
    model_id, _ = publish(client, session_factory, files[0])
    run_jobs()
    first = firebase_ml.model_named("shapes")
    assert first is not None
    number = add_version(client, session_factory, model_id)
    sha256 = add_tflite(client, session_factory, model_id, number, files[1])
    response = client.post(f"/v1/models/{model_id}:publish", json={"modelVersion": number})
    assert response.status_code == 200, response.text

    run_jobs()
    there = firebase_ml.model_named("shapes")
    assert there is not None
    assert there["name"] == first["name"] and there["modelHash"] == sha256 != first["modelHash"]
    assert there["tfliteModel"]["gcsTfliteUri"].endswith(f"/{model_id}-v{number}.tflite")
    assert there["state"] == {"published": True}
    assert len(firebase_ml.models) == 1
    record = mirror_of(client, model_id)
    assert (record["state"], record["modelVersion"], record["modelHash"]) == (
        "SYNCED",
        number,
        sha256,
    )


def test_jobs_queued_one_after_another_converge_on_the_latest_state(
    client, session_factory, run_jobs, firebase_ml, files
):
    model_id, _ = publish(client, session_factory, files[0])
    number = add_version(client, session_factory, model_id)
    sha256 = add_tflite(client, session_factory, model_id, number, files[1])
    client.post(f"/v1/models/{model_id}:publish", json={"modelVersion": number})
    client.post(f"/v1/models/{model_id}:unpublish")
    client.post(f"/v1/models/{model_id}:publish", json={"modelVersion": number})
    assert len(mirror_jobs(session_factory)) == 4

    assert run_jobs() == 4
    [there] = firebase_ml.models.values()
    assert (there["modelHash"], there["state"]) == (sha256, {"published": True})
    assert mirror_of(client, model_id)["state"] == "SYNCED"


def test_a_publish_while_the_job_runs_is_mirrored_by_that_job(
    client, settings, session_factory, firebase_ml, files
):
    model_id, _ = publish(client, session_factory, files[0])
    number = add_version(client, session_factory, model_id)
    sha256 = add_tflite(client, session_factory, model_id, number, files[1])

    def publish_the_new_version(method: str, path: str) -> None:
        if method == "POST":  # the job is creating the model with version 1's file
            firebase_ml.on_request = None
            response = client.post(f"/v1/models/{model_id}:publish", json={"modelVersion": number})
            assert response.status_code == 200, response.text

    firebase_ml.on_request = publish_the_new_version
    run_one_job(settings, session_factory)
    # The job saw the model change under it and went round again.
    [there] = firebase_ml.models.values()
    assert (there["modelHash"], there["state"]) == (sha256, {"published": True})
    record = mirror_of(client, model_id)
    assert (record["state"], record["modelVersion"]) == ("SYNCED", number)
    assert [job.state for job in mirror_jobs(session_factory)] == ["SUCCEEDED", "QUEUED"]


def test_a_firebase_model_apps_download_by_our_name_is_adopted(
    client, session_factory, run_jobs, firebase_ml, files
):
    # Made before the mirror (in the console, say), and locked by an operation just now.
    name = firebase_ml.add_model(PROJECT, "shapes", locked=True)
    model_id, sha256 = publish(client, session_factory, files[0])

    run_jobs()
    [there] = firebase_ml.models.values()
    assert there["name"] == name and "activeOperations" not in there
    assert (there["modelHash"], there["state"]) == (sha256, {"published": True})
    assert there["tags"] == ["from-console", "edge-automl", model_id]
    assert mirror_of(client, model_id)["firebaseModel"] == name


def test_unpublishing_unpublishes_there(client, session_factory, run_jobs, firebase_ml, files):
    model_id, sha256 = publish(client, session_factory, files[0])
    run_jobs()
    response = client.post(f"/v1/models/{model_id}:unpublish")
    assert response.json()["firebaseMirror"]["state"] == "PENDING"

    run_jobs()
    there = firebase_ml.model_named("shapes")
    assert there is not None and there["state"] == {"published": False}
    record = mirror_of(client, model_id)
    assert record["state"] == "SYNCED" and record["published"] is False
    # Firebase keeps the model and its file, unpublished.
    assert (record["firebaseModel"], record["modelVersion"], record["modelHash"]) == (
        there["name"],
        1,
        sha256,
    )


def test_renaming_a_mirrored_model_renames_it_there(
    client, session_factory, run_jobs, firebase_ml, files
):
    model_id, sha256 = publish(client, session_factory, files[0])
    run_jobs()
    before = firebase_ml.model_named("shapes")
    assert before is not None
    response = client.patch(f"/v1/models/{model_id}", json={"displayName": "fruit"})
    assert response.json()["firebaseMirror"]["state"] == "PENDING"

    run_jobs()
    assert firebase_ml.model_named("shapes") is None
    there = firebase_ml.model_named("fruit")
    assert there is not None and there["name"] == before["name"]
    assert (there["modelHash"], there["state"]) == (sha256, {"published": True})
    assert mirror_of(client, model_id)["state"] == "SYNCED"


def test_a_burst_of_503s_is_retried_until_synced(
    client, settings, session_factory, run_jobs, firebase_ml, files
):
    model_id, sha256 = publish(client, session_factory, files[0])
    # firebase-admin itself retries a 503 four times; the fifth fails the first attempt.
    firebase_ml.fail_next(6, 503)

    run_one_job(settings, session_factory)
    record = mirror_of(client, model_id)
    assert (record["state"], record["attempts"]) == ("PENDING", 1)
    assert record["error"]["status"] == "UNAVAILABLE"
    assert "injected UNAVAILABLE" in record["error"]["message"]
    [job] = mirror_jobs(session_factory)
    assert job.state == "QUEUED" and job.attempts == 1

    assert run_jobs() == 1
    record = mirror_of(client, model_id)
    assert (record["state"], record["attempts"], record["error"]) == ("SYNCED", 2, None)
    there = firebase_ml.model_named("shapes")
    assert there is not None and there["modelHash"] == sha256
    assert there["state"] == {"published": True}


def test_a_permanent_refusal_shows_on_the_model_and_publishing_again_retries(
    client, session_factory, run_jobs, firebase_ml, files
):
    model_id, _ = publish(client, session_factory, files[0])
    firebase_ml.fail_next(1, 403, "The caller does not have permission")

    assert run_jobs() == 1  # not retried
    [job] = mirror_jobs(session_factory)
    assert (job.state, job.attempts) == ("FAILED", 1)
    model = client.get(f"/v1/models/{model_id}").json()
    assert model["state"]["published"] is True  # our own publish stands
    record = model["firebaseMirror"]
    assert record["state"] == "FAILED"
    assert record["error"] == {
        "code": 7,
        "status": "PERMISSION_DENIED",
        "message": "Firebase ML: The caller does not have permission",
    }
    assert firebase_ml.models == {}

    client.post(f"/v1/models/{model_id}:publish")
    run_jobs()
    assert mirror_of(client, model_id)["state"] == "SYNCED"
    assert firebase_ml.model_named("shapes") is not None


def test_firebase_ml_refusing_the_file_is_a_permanent_failure(
    client, session_factory, run_jobs, firebase_ml
):
    model_id, _ = publish(client, session_factory, b"not a TFLite file at all")
    run_jobs()
    record = mirror_of(client, model_id)
    assert record["state"] == "FAILED"
    assert record["error"]["status"] == "FAILED_PRECONDITION"
    assert record["error"]["message"] == (
        "Firebase ML refused the file of version 1: Invalid Model"
    )
    there = firebase_ml.model_named("shapes")
    assert there is not None and "published" not in there["state"]


def test_a_name_firebase_ml_does_not_allow_is_refused_with_the_reason(
    client, session_factory, run_jobs, firebase_ml, files
):
    model_id, _ = publish(client, session_factory, files[0], name="a" * 33)
    run_jobs()
    record = mirror_of(client, model_id)
    assert record["state"] == "FAILED"
    assert "cannot be used in Firebase ML" in record["error"]["message"]
    assert firebase_ml.models == {}
    assert client.get(f"/v1/models/{model_id}").json()["state"]["published"] is True


def test_deleting_with_force_deletes_there(client, session_factory, run_jobs, firebase_ml, files):
    model_id, _ = publish(client, session_factory, files[0])
    run_jobs()
    there = firebase_ml.model_named("shapes")
    assert there is not None

    assert client.delete(f"/v1/models/{model_id}", params={"force": "true"}).status_code == 204
    delete_job = mirror_jobs(session_factory)[-1]
    assert delete_job.payload == {"modelId": model_id, "firebaseModel": there["name"]}
    run_jobs()
    assert firebase_ml.models == {}
    assert mirror_jobs(session_factory)[-1].state == "SUCCEEDED"


def test_a_failed_delete_is_not_queued(client, session_factory, firebase_ml, files):
    model_id, _ = publish(client, session_factory, files[0])
    refused = client.delete(f"/v1/models/{model_id}")  # published, no force
    assert refused.status_code == 409
    assert len(mirror_jobs(session_factory)) == 1  # the publish's only


def test_with_the_mirror_off_nothing_is_queued(
    settings, engine, session_factory, firebase_ml, files
):
    off = settings.model_copy(
        update={
            "firebase_mirror_project": None,
            "firebase_mirror_bucket": None,
            "firebase_credentials_file": None,
            "firebase_ml_base_url": None,
        }
    )
    with TestClient(create_app(off, engine=engine)) as client:
        model_id, _ = publish(client, session_factory, files[0])
        assert client.get(f"/v1/models/{model_id}").json()["firebaseMirror"] is None
        client.post(f"/v1/models/{model_id}:unpublish")
        client.delete(f"/v1/models/{model_id}")
    assert mirror_jobs(session_factory) == []
    assert firebase_ml.calls == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"firebase_mirror_project": "edge-mirror-test"},
            "EDGE_AUTOML_FIREBASE_MIRROR_BUCKET is required with "
            "EDGE_AUTOML_FIREBASE_MIRROR_PROJECT",
        ),
        (
            {"firebase_mirror_bucket": "models"},
            "EDGE_AUTOML_FIREBASE_MIRROR_BUCKET set but EDGE_AUTOML_FIREBASE_MIRROR_PROJECT is not",
        ),
        (
            {"firebase_mirror_project": "Edge", "firebase_mirror_bucket": "models"},
            "EDGE_AUTOML_FIREBASE_MIRROR_PROJECT: Value error, must be a project id",
        ),
        (
            {"firebase_mirror_project": "edge-mirror-test", "firebase_mirror_bucket": "gs://m"},
            "EDGE_AUTOML_FIREBASE_MIRROR_BUCKET: Value error, must be a bucket name",
        ),
        (
            {
                "firebase_mirror_project": "edge-mirror-test",
                "firebase_mirror_bucket": "models",
                "firebase_credentials_file": "/nonexistent/key.json",
            },
            "EDGE_AUTOML_FIREBASE_CREDENTIALS_FILE: no file at /nonexistent/key.json",
        ),
        (
            {
                "firebase_mirror_project": "edge-mirror-test",
                "firebase_mirror_bucket": "models",
                "firebase_ml_base_url": "firebaseml.example.com",
            },
            "EDGE_AUTOML_FIREBASE_ML_BASE_URL: Value error, must start with http",
        ),
    ],
)
def test_mirror_settings_are_checked_at_start_up(fields: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(**fields)
    assert message in str(raised.value)


def test_changes_through_our_firebase_api_are_mirrored_too(
    client, session_factory, run_jobs, firebase_ml, files
):
    model_id, _ = register(client, session_factory, name="shapes")
    add_tflite(client, session_factory, model_id, 1, files[0])
    ours = f"/v1beta2/projects/{PROJECT}/models/{model_id}"
    published = client.patch(
        ours, params={"updateMask": "state.published"}, json={"state": {"published": True}}
    )
    assert published.status_code == 200, published.text
    assert mirror_of(client, model_id)["state"] == "PENDING"
    run_jobs()
    there = firebase_ml.model_named("shapes")
    assert there is not None and there["state"] == {"published": True}
    assert client.delete(ours).status_code == 200
    assert len(mirror_jobs(session_factory)) == 2
    run_jobs()
    assert firebase_ml.model_named("shapes") is None

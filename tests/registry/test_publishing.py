"""Registry writes: tags, renaming, publishing (one version or an A/B split), etags with
If-Match, locking by running operations, deletion and concurrent writers."""

from __future__ import annotations

import hashlib
import threading

import pytest

from app.errors import Conflict
from app.kit.ids import new_id
from app.registry import service
from app.registry.schemas import ModelUpdate
from tests.registry.test_api import register
from tests.training.test_api import error_of


def add_tflite(client, session_factory, model_id: str, number: int, data: bytes) -> str:
    """Store a TFLite file for a version, as the export task does; returns its hash."""
    stored = service.StoredFile(
        key=service.artifact_key(model_id, number, "tflite"),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    client.app.state.blobs.put(stored.key, data)
    with session_factory.begin() as session:
        version = service.get_version(session, model_id=model_id, version=number)
        assert version is not None
        service.add_artifact(session, version=version, format="tflite", stored=stored, details={})
    return stored.sha256


def add_version(client, session_factory, model_id: str) -> int:
    data = new_id().encode()
    # Keyed by a fresh id: concurrent writers learn their number only when it is taken.
    stored = service.StoredFile(
        key=f"{service.model_prefix(model_id)}files/{new_id()}.pt",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    client.app.state.blobs.put(stored.key, data)
    with session_factory.begin() as session:
        model = service.get(session, model_id=model_id)
        return service.add_version(
            session, model=model, training_job_id=None, weights=stored
        ).version


def test_a_new_model_is_unpublished_untagged_and_has_an_etag(client, session_factory):
    model_id, _ = register(client, session_factory)
    response = client.get(f"/v1/models/{model_id}")
    model = response.json()
    assert model["tags"] == [] and model["source"] == "training"
    assert model["state"] == {"published": False, "validationError": None}
    assert model["publishedVersion"] is None and model["modelHash"] is None
    assert model["activeOperations"] == []
    assert response.headers["ETag"] == f'"{model["etag"]}"'
    assert model["versions"][0]["format"] == "pytorch"


def test_patch_renames_and_tags_and_moves_the_etag(client, session_factory):
    model_id, _ = register(client, session_factory)
    etag = client.get(f"/v1/models/{model_id}").json()["etag"]
    response = client.patch(
        f"/v1/models/{model_id}",
        params={"updateMask": "displayName,tags"},
        json={"displayName": "fruit_v2", "tags": ["prod", "fruit", "prod"]},
        headers={"If-Match": f'"{etag}"'},
    )
    assert response.status_code == 200, response.text
    model = response.json()
    assert (model["displayName"], model["tags"]) == ("fruit_v2", ["fruit", "prod"])
    assert model["etag"] != etag
    # The old etag is stale now.
    stale = client.patch(f"/v1/models/{model_id}", json={"tags": []}, headers={"If-Match": etag})
    assert "changed since it was read" in error_of(stale, 412, "FAILED_PRECONDITION")["message"]
    # Without a mask, the fields sent are updated; the rest stay.
    model = client.patch(f"/v1/models/{model_id}", json={"tags": ["a"]}).json()
    assert (model["displayName"], model["tags"]) == ("fruit_v2", ["a"])
    # A body etag works as If-Match.
    body_etag = client.patch(f"/v1/models/{model_id}", json={"tags": ["b"], "etag": "nope"})
    error_of(body_etag, 412, "FAILED_PRECONDITION")


@pytest.mark.parametrize(
    ("params", "body", "field"),
    [
        ({"updateMask": "labels"}, {"tags": ["a"]}, "updateMask"),
        ({"updateMask": "displayName"}, {"tags": ["a"]}, "displayName"),
        ({}, {}, "body"),
        ({}, {"displayName": "has space"}, "displayName"),
        ({}, {"tags": ["ok", "bad/tag"]}, "tags"),
        ({}, {"tags": [f"t{i}" for i in range(21)]}, "tags"),
    ],
)
def test_bad_patches_are_refused_naming_the_field(client, session_factory, params, body, field):
    model_id, _ = register(client, session_factory)
    before = client.get(f"/v1/models/{model_id}").json()
    response = client.patch(f"/v1/models/{model_id}", params=params, json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]
    assert client.get(f"/v1/models/{model_id}").json() == before


def test_publish_needs_a_tflite_file_then_serves_the_chosen_version(client, session_factory):
    model_id, _ = register(client, session_factory, name="fruit")
    refused = client.post(f"/v1/models/{model_id}:publish", json={})
    message = error_of(refused, 400, "FAILED_PRECONDITION")["message"]
    assert "has no TFLite file" in message and f"/v1/models/{model_id}:export" in message
    digest = add_tflite(client, session_factory, model_id, 1, b"tflite v1")
    response = client.post(f"/v1/models/{model_id}:publish")
    assert response.status_code == 200, response.text
    model = response.json()
    assert model["state"]["published"] is True
    assert (model["publishedVersion"], model["trafficSplit"]) == (1, {"1": 100})
    assert model["modelHash"] == digest
    listed = client.get("/v1/models", params={"filter": "state.published = true"}).json()
    assert [m["id"] for m in listed["models"]] == [model_id]
    # A second version is published explicitly; the hash follows it.
    number = add_version(client, session_factory, model_id)
    digest2 = add_tflite(client, session_factory, model_id, number, b"tflite v2")
    model = client.post(f"/v1/models/{model_id}:publish", json={"modelVersion": number}).json()
    assert (model["publishedVersion"], model["modelHash"]) == (2, digest2)
    model = client.post(f"/v1/models/{model_id}:unpublish").json()
    assert model["state"]["published"] is False and model["publishedVersion"] is None
    assert (
        client.get("/v1/models", params={"filter": "state.published = true"}).json()["models"] == []
    )


def test_an_ab_split_publishes_two_versions_by_weight(client, session_factory):
    model_id, _ = register(client, session_factory)
    add_tflite(client, session_factory, model_id, 1, b"one")
    number = add_version(client, session_factory, model_id)
    add_tflite(client, session_factory, model_id, number, b"two")
    model = client.post(
        f"/v1/models/{model_id}:publish", json={"trafficSplit": {"1": 20, "2": 80}}
    ).json()
    assert (model["trafficSplit"], model["publishedVersion"]) == ({"1": 20, "2": 80}, 2)
    for split, words in (
        ({"1": 50, "2": 40}, "sum to 100"),
        ({"1": 50, "3": 50}, "no version 3"),
        ({"one": 100}, "not a version number"),
        ({"1": 0, "2": 100}, "1-100"),
    ):
        refused = client.post(f"/v1/models/{model_id}:publish", json={"trafficSplit": split})
        assert words in error_of(refused, 400, "INVALID_ARGUMENT")["message"], split
    both = client.post(
        f"/v1/models/{model_id}:publish", json={"modelVersion": 1, "trafficSplit": {"1": 100}}
    )
    error_of(both, 400, "INVALID_ARGUMENT")
    assert client.get(f"/v1/models/{model_id}").json()["trafficSplit"] == {"1": 20, "2": 80}


def test_one_published_model_per_display_name(client, session_factory):
    first, _ = register(client, session_factory, name="detector")
    second, _ = register(client, session_factory, name="detector")
    for model_id in (first, second):
        add_tflite(client, session_factory, model_id, 1, model_id.encode())
    assert client.post(f"/v1/models/{first}:publish").status_code == 200
    refused = client.post(f"/v1/models/{second}:publish")
    assert first in error_of(refused, 409, "ALREADY_EXISTS")["message"]
    # Renaming a published model onto a published name is refused the same way.
    client.patch(f"/v1/models/{second}", json={"displayName": "other"})
    assert client.post(f"/v1/models/{second}:publish").status_code == 200
    renamed = client.patch(f"/v1/models/{second}", json={"displayName": "detector"})
    error_of(renamed, 409, "ALREADY_EXISTS")


def test_publish_and_delete_check_if_match(client, session_factory):
    model_id, _ = register(client, session_factory)
    add_tflite(client, session_factory, model_id, 1, b"x")
    etag = client.get(f"/v1/models/{model_id}").json()["etag"]
    client.patch(f"/v1/models/{model_id}", json={"tags": ["moved"]})
    for response in (
        client.post(f"/v1/models/{model_id}:publish", headers={"If-Match": etag}),
        client.post(f"/v1/models/{model_id}:unpublish", headers={"If-Match": etag}),
        client.delete(f"/v1/models/{model_id}", headers={"If-Match": etag}),
    ):
        error_of(response, 412, "FAILED_PRECONDITION")
    assert (
        client.post(f"/v1/models/{model_id}:publish", headers={"If-Match": "*"}).status_code == 200
    )


def test_a_running_export_locks_the_model(client, session_factory, run_jobs):
    model_id, _ = register(client, session_factory)
    add_tflite(client, session_factory, model_id, 1, b"x")
    operation = client.post(f"/v1/models/{model_id}:export", json={"format": "onnx"}).json()
    model = client.get(f"/v1/models/{model_id}").json()
    assert model["activeOperations"] == [{"name": operation["name"]}]
    locked = client.post(f"/v1/models/{model_id}:publish")
    assert operation["name"] in error_of(locked, 409, "ABORTED")["message"]
    run_jobs()  # the export fails (the stored weights are not a model): the lock goes anyway
    assert client.get(f"/v1/models/{model_id}").json()["activeOperations"] == []
    assert client.post(f"/v1/models/{model_id}:publish").status_code == 200


def test_delete_is_refused_while_published_unless_forced_and_removes_the_files(
    client, session_factory, run_jobs
):
    model_id, _ = register(client, session_factory)
    add_tflite(client, session_factory, model_id, 1, b"x")
    client.post(f"/v1/models/{model_id}:publish")
    blobs = client.app.state.blobs
    assert len(list(blobs.list(service.model_prefix(model_id)))) == 2
    refused = client.delete(f"/v1/models/{model_id}")
    assert "unpublish it first" in error_of(refused, 409, "ABORTED")["message"]
    assert client.get(f"/v1/models/{model_id}").status_code == 200
    assert client.delete(f"/v1/models/{model_id}", params={"force": True}).status_code == 204
    error_of(client.get(f"/v1/models/{model_id}"), 404, "NOT_FOUND")
    run_jobs()
    assert list(blobs.list(service.model_prefix(model_id))) == []
    error_of(client.delete(f"/v1/models/{model_id}"), 404, "NOT_FOUND")


def test_uploaded_versions_cannot_be_converted(client, session_factory):
    model_id, _ = register(client, session_factory)
    with session_factory.begin() as session:
        row = service.get_version(session, model_id=model_id, version=1)
        assert row is not None
        row.format = "tflite"
    refused = client.post(f"/v1/models/{model_id}:export", json={"format": "onnx"})
    assert "uploaded as tflite" in error_of(refused, 400, "FAILED_PRECONDITION")["message"]


def test_of_two_writers_that_read_the_same_state_one_loses(client, session_factory):
    model_id, _ = register(client, session_factory)
    first, second = session_factory(), session_factory()
    try:
        # The second writer reads, and its transaction ends (SQLite lets one writer's
        # transaction run at a time); what it read stays in its session, as in a request
        # that read the model before another request changed it.
        read_second = service.get(second, model_id=model_id)
        second.commit()
        read_first = service.get(first, model_id=model_id)
        assert read_first.revision == read_second.revision
        service.update(
            first,
            model_id=model_id,
            update_in=ModelUpdate(tags=["a"]),
            update_mask=None,
            if_match=None,
        )
        first.commit()
        with pytest.raises(Conflict, match="changed concurrently"):
            service.update(
                second,
                model_id=model_id,
                update_in=ModelUpdate(display_name="b"),
                update_mask=None,
                if_match=None,
            )
    finally:
        first.close()
        second.rollback()
        second.close()
    model = client.get(f"/v1/models/{model_id}").json()
    assert (model["displayName"], model["tags"]) == ("shapes", ["a"])


@pytest.mark.postgres_only
def test_concurrent_writers_get_distinct_version_numbers(client, session_factory):
    model_id, _ = register(client, session_factory)
    start = threading.Barrier(4)
    numbers: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            start.wait()
            numbers.append(add_version(client, session_factory, model_id))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(numbers) == [2, 3, 4, 5]
    versions = client.get(f"/v1/models/{model_id}").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3, 4, 5]

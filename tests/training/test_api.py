"""Training jobs over HTTP: validation, the dataset snapshot, listing, cancel, clean-up."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from app.kit.ids import new_id
from app.registry import service as registry_service
from tests.auth.test_api_keys import make_key
from tests.datasets.test_api import all_images, blob_files, create_dataset
from tests.training.conftest import make_scene, read_snapshot, start_training


def error_of(response, status_code: int, status: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    error = response.json()["error"]
    assert error["status"] == status, error
    return error


def post(client, **fields: Any):
    return client.post("/v1/trainingJobs", json=fields)


def add_model(session_factory, client, *, labels: list[str], model_type: str) -> str:
    """A registered model with one stored version (its file is not a real detector)."""
    data = b"not a detector"
    model_id = new_id()
    key = registry_service.weights_key(model_id, 1)
    client.app.state.blobs.put(key, data)
    with session_factory.begin() as session:
        registry_service.create_model(
            session,
            model_id=model_id,
            display_name="earlier",
            labels=labels,
            model_type=model_type,
            input_size=320,
            training_job_id=None,
            weights=registry_service.StoredFile(
                key=key, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
            ),
        )
    return model_id


# -- create ------------------------------------------------------------------------------


def test_create_queues_a_job_with_the_dataset_frozen(client, make_dataset):
    dataset_id = make_dataset({"TRAIN": 6, "VALIDATION": 2, "TEST": 3}, negatives=2)
    job = start_training(client, dataset_id, modelType="mobile-low-latency", seed=7)
    assert job["name"] == f"trainingJobs/{job['id']}"
    assert job["state"] == "QUEUED"
    assert job["modelType"] == "MOBILE_TF_LOW_LATENCY_1", "an alias becomes the Vertex name"
    assert job["datasetId"] == dataset_id
    assert (job["budgetMilliNodeHours"], job["disableEarlyStopping"], job["seed"]) == (
        24_000,
        False,
        7,
    )
    assert job["imageCounts"] == {"train": 8, "validation": 2, "test": 3}
    assert job["labels"] == ["circle", "square"]
    assert job["progress"] is None and job["modelId"] is None and job["error"] is None
    assert job["costMilliNodeHours"] is None and job["successfulStopReason"] is None
    assert job["attempts"] == 0

    operation = client.get(f"/v1/{job['operationName']}").json()
    assert operation["id"] == job["operationId"]
    assert operation["metadata"]["kind"] == "training.train"
    assert operation["metadata"]["state"] == "QUEUED"
    assert client.get(f"/v1/trainingJobs/{job['id']}").json() == job


def test_snapshot_holds_labelled_images_and_ignores_later_edits(client, make_dataset, settings):
    dataset_id = make_dataset({"TRAIN": 4, "VALIDATION": 2, "TEST": 2}, negatives=1)
    # An unlabelled image is not trained on.
    data, _ = make_scene(500)
    upload = client.post(f"/v1/datasets/{dataset_id}/images", files={"files": ("u.jpg", data)})
    assert upload.status_code == 200, upload.text
    images = {i["id"]: i for i in all_images(client, dataset_id)}
    job = start_training(client, dataset_id)
    before = read_snapshot(client, job["id"])

    assert before["datasetId"] == dataset_id and before["labels"] == ["circle", "square"]
    labelled = {i for i, image in images.items() if image["labeled"]}
    assert {image["id"] for image in before["images"]} == labelled
    assert len(labelled) == 9 and len(images) == 10
    for image in before["images"]:
        full = client.get(f"/v1/datasets/{dataset_id}/images/{image['id']}").json()
        assert image["split"] == full["split"]
        expected = sorted(
            [before["labels"].index(b["label"]), b["xMin"], b["yMin"], b["xMax"], b["yMax"]]
            for b in full["boxes"]
        )
        assert sorted(image["boxes"]) == expected
        assert client.app.state.blobs.exists(image["blobKey"])
    assert sum(1 for image in before["images"] if not image["boxes"]) == 1, "the negative stays"

    # Edit the dataset: relabel an image with a new label, move one to another split,
    # label the unlabelled one.
    first, second = sorted(labelled)[:2]
    relabel = {"boxes": [{"label": "triangle", "xMin": 0.1, "yMin": 0.1, "xMax": 0.4, "yMax": 0.4}]}
    path = f"/v1/datasets/{dataset_id}/images"
    assert client.put(f"{path}/{first}/annotations", json=relabel).status_code == 200
    assert client.patch(f"{path}/{second}", json={"split": "TEST"}).status_code == 200
    unlabelled = next(i for i in images if i not in labelled)
    assert client.put(f"{path}/{unlabelled}/annotations", json=relabel).status_code == 200
    assert "triangle" in client.get(f"/v1/datasets/{dataset_id}").json()["labels"]

    assert read_snapshot(client, job["id"]) == before
    again = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert again["labels"] == ["circle", "square"]
    assert again["imageCounts"] == job["imageCounts"]


def test_defaults_and_budget_limits(client, make_dataset):
    dataset_id = make_dataset()
    low = start_training(client, dataset_id, budgetMilliNodeHours=10, disableEarlyStopping=True)
    assert (low["budgetMilliNodeHours"], low["disableEarlyStopping"]) == (10, True)
    high = start_training(client, dataset_id, budgetMilliNodeHours=100_000)
    assert high["budgetMilliNodeHours"] == 100_000
    for budget in (9, 100_001, -1):
        error = error_of(
            post(
                client,
                datasetId=dataset_id,
                displayName="x",
                modelType="MOBILE_TF_VERSATILE_1",
                budgetMilliNodeHours=budget,
            ),
            400,
            "INVALID_ARGUMENT",
        )
        assert error["message"].startswith("budgetMilliNodeHours:")
        assert "between 10 and 100000" in error["message"]
        assert error["details"][0]["fieldViolations"][0]["field"] == "budgetMilliNodeHours"


def test_unknown_model_type_names_the_choices(client, make_dataset):
    dataset_id = make_dataset()
    error = error_of(
        post(client, datasetId=dataset_id, displayName="x", modelType="CLOUD_HIGH_ACCURACY_1"),
        400,
        "INVALID_ARGUMENT",
    )
    assert error["message"].startswith("modelType:")
    for choice in ("MOBILE_TF_LOW_LATENCY_1", "MOBILE_TF_VERSATILE_1", "mobile-high-accuracy"):
        assert choice in error["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"displayName": "x", "modelType": "mobile-versatile"}, "datasetId"),
        ({"datasetId": "d", "modelType": "mobile-versatile"}, "displayName"),
        ({"datasetId": "d", "displayName": "x"}, "modelType"),
        ({"datasetId": "d", "displayName": " ", "modelType": "mobile-versatile"}, "displayName"),
        (
            {"datasetId": "d", "displayName": "x", "modelType": "mobile-versatile", "seed": -1},
            "seed",
        ),
        (
            {"datasetId": "d", "displayName": "x", "modelType": "mobile-versatile", "epochs": 3},
            "epochs",
        ),
    ],
)
def test_malformed_requests_name_the_field(client, fields, field):
    error = error_of(post(client, **fields), 400, "INVALID_ARGUMENT")
    assert error["message"].startswith(f"{field}:"), error["message"]


def test_unknown_dataset_is_404(client):
    error = error_of(
        post(client, datasetId="nope", displayName="x", modelType="mobile-versatile"),
        404,
        "NOT_FOUND",
    )
    assert "dataset 'nope'" in error["message"]


def test_untrainable_dataset_is_refused_naming_the_label(client, make_dataset):
    empty = create_dataset(client, "empty")
    error = error_of(
        post(client, datasetId=empty, displayName="x", modelType="mobile-versatile"),
        400,
        "FAILED_PRECONDITION",
    )
    assert "TRAIN" in error["message"]
    # Labels seen only outside TRAIN cannot be learnt.
    dataset_id = make_dataset({"TRAIN": 3, "TEST": 2})
    image = next(i for i in all_images(client, dataset_id) if i["split"] == "TEST")
    box = {"label": "hexagon", "xMin": 0.1, "yMin": 0.1, "xMax": 0.5, "yMax": 0.5}
    client.put(f"/v1/datasets/{dataset_id}/images/{image['id']}/annotations", json={"boxes": [box]})
    error = error_of(
        post(client, datasetId=dataset_id, displayName="x", modelType="mobile-versatile"),
        400,
        "FAILED_PRECONDITION",
    )
    assert "'hexagon'" in error["message"]
    assert client.get("/v1/trainingJobs").json()["trainingJobs"] == []


def test_base_model_must_exist_share_the_labels_and_the_type(client, make_dataset, session_factory):
    dataset_id = make_dataset()
    fields = {"datasetId": dataset_id, "displayName": "again", "modelType": "mobile-versatile"}
    error = error_of(post(client, **fields, baseModelId="missing"), 404, "NOT_FOUND")
    assert "model 'missing'" in error["message"]

    other = add_model(
        session_factory, client, labels=["circle", "star"], model_type="MOBILE_TF_VERSATILE_1"
    )
    error = error_of(post(client, **fields, baseModelId=other), 400, "INVALID_ARGUMENT")
    assert error["message"].startswith("baseModelId:")
    assert "['star']" in error["message"] and "['square']" in error["message"]

    same = add_model(
        session_factory, client, labels=["square", "circle"], model_type="MOBILE_TF_VERSATILE_1"
    )
    error = error_of(
        post(client, **{**fields, "modelType": "MOBILE_TF_HIGH_ACCURACY_1"}, baseModelId=same),
        400,
        "INVALID_ARGUMENT",
    )
    assert error["message"].startswith("modelType:")
    assert "MOBILE_TF_VERSATILE_1" in error["message"]

    job = start_training(client, dataset_id, modelType="mobile-versatile", baseModelId=same)
    assert job["baseModelId"] == same
    # The base model's label order wins, so its class ids keep their meaning.
    assert job["labels"] == ["square", "circle"]
    snapshot = read_snapshot(client, job["id"])
    assert snapshot["baseModel"]["id"] == same and snapshot["baseModel"]["version"] == 1
    for image in snapshot["images"]:
        full = client.get(f"/v1/datasets/{dataset_id}/images/{image['id']}").json()
        assert [snapshot["labels"][box[0]] for box in image["boxes"]] == [
            b["label"] for b in full["boxes"]
        ]


# -- read and list -----------------------------------------------------------------------


def test_get_unknown_job_is_404(client):
    error_of(client.get("/v1/trainingJobs/nope"), 404, "NOT_FOUND")
    error_of(client.get("/v1/trainingJobs/bad%20id"), 404, "NOT_FOUND")
    error_of(client.post("/v1/trainingJobs/nope:cancel"), 404, "NOT_FOUND")


def test_list_pages_newest_first_and_filters(client, make_dataset):
    first = make_dataset(name="first")
    second = make_dataset(name="second")
    jobs = [
        start_training(client, d, displayName=f"job {i}")
        for i, d in enumerate([first, second, first, second, first])
    ]
    cancelled = client.post(f"/v1/trainingJobs/{jobs[1]['id']}:cancel").json()
    assert cancelled["state"] == "CANCELLED"

    seen, token = [], None
    while True:
        params = {"pageSize": 2, **({"pageToken": token} if token else {})}
        page = client.get("/v1/trainingJobs", params=params).json()
        assert len(page["trainingJobs"]) <= 2
        seen += [job["id"] for job in page["trainingJobs"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == [job["id"] for job in reversed(jobs)]

    on_first = client.get("/v1/trainingJobs", params={"datasetId": first}).json()
    assert [j["id"] for j in on_first["trainingJobs"]] == [
        jobs[4]["id"],
        jobs[2]["id"],
        jobs[0]["id"],
    ]
    queued = client.get("/v1/trainingJobs", params={"state": "QUEUED", "datasetId": second}).json()
    assert [j["id"] for j in queued["trainingJobs"]] == [jobs[3]["id"]]
    both = client.get("/v1/trainingJobs", params=[("state", "CANCELLED"), ("state", "FAILED")])
    assert [j["id"] for j in both.json()["trainingJobs"]] == [jobs[1]["id"]]

    page = client.get("/v1/trainingJobs", params={"pageSize": 1, "datasetId": first}).json()
    error = error_of(
        client.get("/v1/trainingJobs", params={"pageToken": page["nextPageToken"]}),
        400,
        "INVALID_ARGUMENT",
    )
    assert "pageToken" in error["message"]
    error_of(client.get("/v1/trainingJobs", params={"state": "DONE"}), 400, "INVALID_ARGUMENT")
    error_of(client.get("/v1/trainingJobs", params={"pageSize": 0}), 400, "INVALID_ARGUMENT")


# -- cancel and clean-up -----------------------------------------------------------------


def test_cancel_a_queued_job_leaves_nothing_in_the_blob_store(client, make_dataset, settings):
    dataset_id = make_dataset()
    before = blob_files(settings)
    job = start_training(client, dataset_id)
    assert [f for f in blob_files(settings) if f not in before] == [
        f"training/{job['id']}/snapshot.json"
    ]
    response = client.post(f"/v1/trainingJobs/{job['id']}:cancel")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "CANCELLED"
    assert body["error"]["status"] == "CANCELLED" and body["endTime"] is not None
    assert client.get(f"/v1/{job['operationName']}").json()["metadata"]["state"] == "CANCELLED"
    assert blob_files(settings) == before
    # Twice is harmless.
    assert client.post(f"/v1/trainingJobs/{job['id']}:cancel").json()["state"] == "CANCELLED"


def test_a_job_whose_snapshot_vanished_fails_for_good_and_cannot_be_cancelled(
    client, make_dataset, run_jobs, settings
):
    dataset_id = make_dataset()
    before = blob_files(settings)
    job = start_training(client, dataset_id)
    client.app.state.blobs.delete(f"training/{job['id']}/snapshot.json")
    assert run_jobs() == 1
    failed = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert failed["state"] == "FAILED"
    assert failed["attempts"] == 1, "a missing snapshot is not retried"
    assert failed["error"]["status"] == "NOT_FOUND"
    assert "snapshot.json" in failed["error"]["message"]
    assert blob_files(settings) == before
    error = error_of(
        client.post(f"/v1/trainingJobs/{job['id']}:cancel"), 400, "FAILED_PRECONDITION"
    )
    assert "already finished as FAILED" in error["message"]


def test_dataset_with_an_active_job_cannot_be_deleted_and_jobs_outlive_it(client, make_dataset):
    dataset_id = make_dataset()
    job = start_training(client, dataset_id)
    error = error_of(client.delete(f"/v1/datasets/{dataset_id}"), 400, "FAILED_PRECONDITION")
    assert job["id"] in error["message"]
    client.post(f"/v1/trainingJobs/{job['id']}:cancel")
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 200
    kept = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert kept["datasetId"] == dataset_id and kept["state"] == "CANCELLED"
    listed = client.get("/v1/trainingJobs", params={"datasetId": dataset_id}).json()
    assert [j["id"] for j in listed["trainingJobs"]] == [job["id"]]


def test_reading_needs_read_and_changing_needs_write(client, make_dataset, session_factory):
    dataset_id = make_dataset()
    job = start_training(client, dataset_id)
    _, reader = make_key(session_factory, "read", name="reader")
    _, writer = make_key(session_factory, "write", name="writer")
    as_reader = {"Authorization": f"Bearer {reader}"}
    body = {"datasetId": dataset_id, "displayName": "x", "modelType": "mobile-versatile"}
    assert client.get("/v1/trainingJobs", headers=as_reader).status_code == 200
    assert client.get(f"/v1/trainingJobs/{job['id']}", headers=as_reader).status_code == 200
    error_of(
        client.post("/v1/trainingJobs", json=body, headers=as_reader), 403, "PERMISSION_DENIED"
    )
    error_of(
        client.post(f"/v1/trainingJobs/{job['id']}:cancel", headers=as_reader),
        403,
        "PERMISSION_DENIED",
    )
    error_of(client.post("/v1/trainingJobs", json=body), 401, "UNAUTHENTICATED")
    as_writer = {"Authorization": f"Bearer {writer}"}
    assert client.post("/v1/trainingJobs", json=body, headers=as_writer).status_code == 200

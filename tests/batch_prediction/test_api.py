"""Batch prediction over HTTP: inputs by path, upload, Cloud Storage and dataset; results as
:predict answers them, per-image errors; refusals that leave nothing; list, get, cancel."""

from __future__ import annotations

import json
import math
from pathlib import Path

from google.cloud import storage

from app.datasets.service import image_key
from tests.batch_prediction.conftest import (
    CHUNK_SIZE,
    create,
    file_input,
    jsonl,
    online_predictions,
    photo,
    results,
    write_photos,
)
from tests.datasets.test_api import blob_files
from tests.training.test_api import error_of


def set_fields(config: dict) -> dict:
    """A read inputConfig without its unset (null) sources."""
    return {key: value for key, value in config.items() if value is not None}


def operation_of(client, job: dict) -> dict:
    return client.get(f"/v1/{job['operationName']}").json()


def test_a_jsonl_file_is_predicted_as_predict_answers_with_per_image_errors(
    client, run_jobs, model_id, import_root, settings
):
    photos = write_photos(import_root / "photos", [1, 2, 3])
    (import_root / "photos" / "notes.jpg").write_text("not an image")
    missing = str(import_root / "photos" / "gone.jpg")
    contents = [photos[0], missing, photos[1], str(import_root / "photos" / "notes.jpg"), photos[2]]
    (import_root / "list.jsonl").write_text(jsonl(contents))
    parameters = {"confidenceThreshold": 0.3, "maxPredictions": 5}

    job = create(
        client,
        model=f"models/{model_id}",
        inputConfig=file_input(import_root / "list.jsonl"),
        modelParameters=parameters,
    )
    assert job["name"] == f"batchPredictionJobs/{job['id']}"
    assert job["state"] == "JOB_STATE_PENDING"
    assert (job["model"], job["modelVersion"], job["instanceCount"]) == (model_id, 1, 5)
    assert job["modelParameters"] == parameters
    assert job["completionStats"] == {"successfulCount": 0, "failedCount": 0, "incompleteCount": 5}
    assert set_fields(job["inputConfig"]) == file_input(import_root / "list.jsonl")
    assert operation_of(client, job)["metadata"]["kind"] == "prediction.batch"
    assert results(client, job["id"]) == [], "nothing is finished yet"

    assert run_jobs() == 1
    done = client.get(f"/v1/batchPredictionJobs/{job['id']}").json()
    assert done["state"] == "JOB_STATE_SUCCEEDED", done["error"]
    assert done["completionStats"] == {"successfulCount": 3, "failedCount": 2, "incompleteCount": 0}
    assert done["startTime"] is not None and done["endTime"] >= done["startTime"]
    output = done["outputInfo"]
    assert output["predictionFileCount"] == math.ceil(5 / CHUNK_SIZE) == 3
    assert output["predictionsPath"] == f"/v1/batchPredictionJobs/{job['id']}/predictions"
    instances_uri = client.app.state.blobs.uri(f"batchPredictionJobs/{job['id']}/instances.jsonl")
    assert output["outputDirectory"] + "instances.jsonl" == instances_uri
    operation = operation_of(client, job)
    assert operation["done"] and operation["metadata"]["progress"] == 1.0
    assert operation["response"]["successfulCount"] == 3
    assert operation["response"]["resumedAfterChunk"] == 0

    lines = results(client, job["id"])
    assert [line["instance"] for line in lines] == [
        {"content": c, "mimeType": "image/jpeg"} for c in contents
    ]
    expected = online_predictions(
        client, model_id, [Path(p).read_bytes() for p in photos], **parameters
    )
    assert [lines[i]["prediction"] for i in (0, 2, 4)] == expected
    assert all(0 < len(p["confidences"]) <= 5 for p in expected)
    gone, notes = lines[1], lines[3]
    assert "prediction" not in gone and "prediction" not in notes
    assert gone["error"]["code"] == 5 and gone["error"]["status"] == "NOT_FOUND"
    assert missing in gone["error"]["message"]
    assert notes["error"]["code"] == 3 and "not an image" in notes["error"]["message"]

    stored = [f for f in blob_files(settings) if f.startswith("batchPredictionJobs/")]
    prefix = f"batchPredictionJobs/{job['id']}/"
    assert stored == [
        f"{prefix}instances.jsonl",
        f"{prefix}predictions_00001.jsonl",
        f"{prefix}predictions_00002.jsonl",
        f"{prefix}predictions_00003.jsonl",
    ]


def test_an_uploaded_csv_is_stored_and_predicted(client, run_jobs, model_id, import_root):
    photos = write_photos(import_root, [4, 5])
    csv_file = "\ufeffuri\r\n" + "".join(f'"{p}",\r\n' for p in photos) + "\r\n"
    response = client.post(
        "/v1/batchPredictionJobs",
        files={"file": ("photos.csv", csv_file.encode(), "text/csv")},
        data={"displayName": "uploaded", "model": model_id, "maxPredictions": "3"},
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert set_fields(job["inputConfig"]) == {
        "instancesFormat": "csv",
        "fileUpload": {"filename": "photos.csv"},
    }
    assert job["instanceCount"] == 2 and job["modelParameters"]["maxPredictions"] == 3
    # The upload lives on in the blob store as the frozen list of instances.
    frozen = client.app.state.blobs.get(f"batchPredictionJobs/{job['id']}/instances.jsonl")
    assert [json.loads(line)["instance"] for line in frozen.splitlines()] == [
        {"content": p} for p in photos
    ]

    assert run_jobs() == 1
    lines = results(client, job["id"])
    assert [line["instance"] for line in lines] == [{"content": p} for p in photos]
    expected = online_predictions(
        client, model_id, [Path(p).read_bytes() for p in photos], maxPredictions=3
    )
    assert [line["prediction"] for line in lines] == expected

    # JSON Lines with no telling file name: the format is given.
    response = client.post(
        "/v1/batchPredictionJobs",
        files={"file": ("list", jsonl(photos[:1]).encode())},
        data={
            "displayName": "uploaded",
            "model": model_id,
            "modelVersion": "1",
            "instancesFormat": "jsonl",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["instanceCount"] == 1


def test_a_datasets_images_are_predicted(client, run_jobs, model_id, make_dataset):
    dataset_id = make_dataset({"TRAIN": 3, "TEST": 2})
    job = create(
        client,
        model=model_id,
        inputConfig={"datasetSource": {"datasetId": dataset_id, "split": "TEST"}},
    )
    assert job["instanceCount"] == 2
    everything = create(
        client, model=model_id, inputConfig={"datasetSource": {"datasetId": dataset_id}}
    )
    assert everything["instanceCount"] == 5
    assert run_jobs() == 2

    test_images = client.get(f"/v1/datasets/{dataset_id}/images", params={"split": "TEST"}).json()
    by_id = {image["id"]: image for image in test_images["images"]}
    lines = results(client, job["id"])
    assert sorted(line["instance"]["imageId"] for line in lines) == sorted(by_id)
    blobs = client.app.state.blobs
    contents = []
    for line in lines:
        image = by_id[line["instance"]["imageId"]]
        assert line["instance"]["mimeType"] == image["mimeType"] == "image/jpeg"
        assert line["instance"]["content"] == blobs.uri(image_key(image["sha256"]))
        contents.append(
            client.get(f"/v1/datasets/{dataset_id}/images/{image['id']}:content").content
        )
    assert [line["prediction"] for line in lines] == online_predictions(client, model_id, contents)
    assert len(results(client, everything["id"])) == 5


def test_input_and_images_on_cloud_storage(
    client, run_jobs, model_id, gcs_client: storage.Client, gcs_bucket: str
):
    bucket = gcs_client.bucket(gcs_bucket)
    for seed in (6, 7):
        bucket.blob(f"photos/{seed}.jpg").upload_from_string(photo(seed))
    uris = [f"gs://{gcs_bucket}/photos/6.jpg", f"gs://{gcs_bucket}/photos/missing.jpg"]
    bucket.blob("lists/a.jsonl").upload_from_string(jsonl(uris))
    bucket.blob("lists/b.csv").upload_from_string(f"content\ngs://{gcs_bucket}/photos/7.jpg\n")

    job = create(
        client,
        model=model_id,
        inputConfig={
            "instancesFormat": "jsonl",
            "gcsSource": {"uris": [f"gs://{gcs_bucket}/lists/a.jsonl"]},
        },
    )
    other = create(
        client,
        model=model_id,
        inputConfig={
            "instancesFormat": "csv",
            "gcsSource": {"uris": [f"gs://{gcs_bucket}/lists/b.csv"]},
        },
    )
    assert run_jobs() == 2
    first, missing = results(client, job["id"])
    [seven] = results(client, other["id"])
    expected = online_predictions(client, model_id, [photo(6), photo(7)])
    assert [first["prediction"], seven["prediction"]] == expected
    assert missing["instance"]["content"] == uris[1]
    assert missing["error"]["status"] == "NOT_FOUND"
    stats = client.get(f"/v1/batchPredictionJobs/{job['id']}").json()["completionStats"]
    assert stats == {"successfulCount": 1, "failedCount": 1, "incompleteCount": 0}

    error = error_of(
        client.post(
            "/v1/batchPredictionJobs",
            json={
                "displayName": "x",
                "model": model_id,
                "inputConfig": file_input(f"gs://{gcs_bucket}/lists/none.jsonl"),
            },
        ),
        400,
        "INVALID_ARGUMENT",
    )
    assert "inputConfig.gcsSource.uris[0]" in error["message"] and "not found" in error["message"]


def test_bad_input_is_refused_naming_the_line_and_field_and_nothing_is_kept(
    client, run_jobs, model_id, import_root, settings
):
    good = write_photos(import_root, [8])[0]
    outside = "/etc/hostname"
    jsonl_cases = [
        (f'{{"content": "{good}"}}\n{{"content": \n', "line 2", "not valid JSON"),
        (
            f'{{"content": "{good}"}}\n\n{{"mimeType": "image/jpeg"}}\n',
            "line 3: content",
            "is required",
        ),
        (f'{{"content": "{good}", "label": "cat"}}\n', "line 1: label", "unknown field"),
        ('{"content": "photos/a.jpg"}\n', "line 1: content", "absolute local path"),
        ('{"content": "http://example.com/a.jpg"}\n', "line 1: content", "https://"),
        ('{"content": "https://example.com/a.jpg"}\n', "line 1: content", "not allowed"),
        (f'{{"content": "{outside}"}}\n', "line 1: content", "outside the import root"),
        (f'{{"content": "{good}", "mimeType": 3}}\n', "line 1: mimeType", "must be a string"),
        ('["gs://b/a.jpg"]\n', "line 1", "JSON object"),
        ("", "inputConfig", "no images"),
    ]
    for index, (text, named, why) in enumerate(jsonl_cases):
        path = import_root / f"bad{index}.jsonl"
        path.write_text(text)
        body = {"displayName": "x", "model": model_id, "inputConfig": file_input(path)}
        error = error_of(client.post("/v1/batchPredictionJobs", json=body), 400, "INVALID_ARGUMENT")
        assert named in error["message"] and why in error["message"], (text, error)
        if "line" in named:
            assert error["message"].startswith("inputConfig.gcsSource.uris[0] line")
            violation = error["details"][0]["fieldViolations"][0]
            assert violation["field"] == f"inputConfig.gcsSource.uris[0] {named}"

    # Every bad line is named, and counted.
    path = import_root / "many.csv"
    path.write_text(f"{good}\n{good},cat\n\nrelative.jpg\n")
    body = {"displayName": "x", "model": model_id, "inputConfig": file_input(path, "csv")}
    error = error_of(client.post("/v1/batchPredictionJobs", json=body), 400, "INVALID_ARGUMENT")
    assert error["message"].startswith("2 lines of inputConfig.gcsSource.uris[0] are invalid")
    assert "line 2: has 2 columns" in error["message"]
    fields = [v["field"] for v in error["details"][0]["fieldViolations"]]
    assert fields == [
        "inputConfig.gcsSource.uris[0] line 2",
        "inputConfig.gcsSource.uris[0] line 4: content",
    ]

    upload = client.post(
        "/v1/batchPredictionJobs",
        files={"file": ("list.jsonl", b'{"content": "a.jpg"}\n')},
        data={"displayName": "x", "model": model_id},
    )
    error = error_of(upload, 400, "INVALID_ARGUMENT")
    assert error["message"].startswith("file line 1: content")

    (import_root / "three.csv").write_text(f"{good}\n{good}\n{good}\n")
    requests = [
        ({"inputConfig": file_input(import_root / "nowhere.jsonl")}, "uris[0]", "not found"),
        ({"inputConfig": file_input("relative.jsonl")}, "uris[0]", "absolute local path"),
        ({"inputConfig": {"gcsSource": {"uris": [good]}}}, "instancesFormat", "is required"),
        (
            {"inputConfig": {**file_input(path), "datasetSource": {"datasetId": "d"}}},
            "inputConfig",
            "exactly one source",
        ),
        (
            {"inputConfig": {"instancesFormat": "csv", "datasetSource": {"datasetId": "d"}}},
            "instancesFormat",
            "not to datasetSource",
        ),
        ({"inputConfig": {}}, "inputConfig", "exactly one source"),
        (
            {"inputConfig": file_input(path, "xml")},
            "inputConfig.instancesFormat",
            "",
        ),
        (
            {"inputConfig": file_input(path), "modelParameters": {"maxPredictions": 501}},
            "maxPredictions",
            "",
        ),
        (
            {"inputConfig": file_input(path), "modelParameters": {"confidenceThreshold": 2}},
            "confidenceThreshold",
            "",
        ),
        (
            {
                "inputConfig": file_input(path),
                "outputConfig": {"gcsDestination": {"outputUriPrefix": "gs://b/out"}},
            },
            "outputConfig.gcsDestination",
            "not supported",
        ),
        ({"inputConfig": file_input(path), "displayName": "  "}, "displayName", "blank"),
    ]
    for fields_in, named, why in requests:
        body = {"displayName": "x", "model": model_id, **fields_in}
        error = error_of(client.post("/v1/batchPredictionJobs", json=body), 400, "INVALID_ARGUMENT")
        text = error["message"] + json.dumps(error["details"])
        assert named in text and why in text, (fields_in, error)

    client.app.state.settings = settings.model_copy(update={"batch_prediction_max_instances": 2})
    try:
        body = {
            "displayName": "x",
            "model": model_id,
            "inputConfig": file_input(import_root / "three.csv", "csv"),
        }
        error = error_of(client.post("/v1/batchPredictionJobs", json=body), 400, "INVALID_ARGUMENT")
        assert "more than 2 images" in error["message"]
        assert "BATCH_PREDICTION_MAX_INSTANCES" in error["message"]
    finally:
        client.app.state.settings = settings
    client.app.state.settings = settings.model_copy(update={"import_root": None})
    try:
        body = {"displayName": "x", "model": model_id, "inputConfig": file_input(path)}
        error = error_of(client.post("/v1/batchPredictionJobs", json=body), 400, "INVALID_ARGUMENT")
        assert "EDGE_AUTOML_IMPORT_ROOT" in error["message"]
    finally:
        client.app.state.settings = settings

    # Nothing of any refused request was kept.
    assert client.get("/v1/batchPredictionJobs").json()["batchPredictionJobs"] == []
    assert client.get("/v1/operations").json()["operations"] == []
    assert not [f for f in blob_files(settings) if f.startswith("batchPredictionJobs/")]
    assert run_jobs() == 0


def test_unknown_models_versions_and_unexported_files_are_refused(
    client, session_factory, model_id, import_root, shapes_model
):
    from tests.registry.test_export import register_file

    path = import_root / "one.jsonl"
    path.write_text(jsonl(write_photos(import_root, [9])))
    body = {"displayName": "x", "inputConfig": file_input(path)}
    post = client.post
    error = error_of(
        post("/v1/batchPredictionJobs", json={**body, "model": "nope"}), 404, "NOT_FOUND"
    )
    assert "nope" in error["message"]
    error = error_of(
        post("/v1/batchPredictionJobs", json={**body, "model": model_id, "modelVersion": 2}),
        404,
        "NOT_FOUND",
    )
    assert "no version 2" in error["message"]
    unexported = register_file(client, session_factory, shapes_model)
    error = error_of(
        post("/v1/batchPredictionJobs", json={**body, "model": unexported}),
        400,
        "FAILED_PRECONDITION",
    )
    assert "export it first" in error["message"] and f"{unexported}:export" in error["message"]
    error_of(
        post(
            "/v1/batchPredictionJobs",
            json={
                **body,
                "model": model_id,
                "inputConfig": {"datasetSource": {"datasetId": "nope"}},
            },
        ),
        404,
        "NOT_FOUND",
    )
    error_of(client.get("/v1/batchPredictionJobs/nope"), 404, "NOT_FOUND")
    error_of(client.get("/v1/batchPredictionJobs/nope/predictions"), 404, "NOT_FOUND")
    error_of(client.post("/v1/batchPredictionJobs/nope:cancel"), 404, "NOT_FOUND")
    error_of(
        post("/v1/batchPredictionJobs", content=b"x", headers={"content-type": "text/plain"}),
        400,
        "INVALID_ARGUMENT",
    )
    assert client.get("/v1/batchPredictionJobs").json()["batchPredictionJobs"] == []


def test_jobs_are_listed_newest_first_in_pages_and_filtered(
    client, session_factory, model_id, import_root, shapes_model, shapes_onnx
):
    from tests.batch_prediction.conftest import register_exported

    other_model = register_exported(client, session_factory, shapes_model, shapes_onnx)
    path = import_root / "one.jsonl"
    path.write_text(jsonl(write_photos(import_root, [10])))
    made = [
        create(client, model=model, inputConfig=file_input(path))["id"]
        for model in (model_id, other_model, model_id, model_id)
    ]
    newest_first = made[::-1]

    seen, token = [], None
    while True:
        params = {"pageSize": 3, **({"pageToken": token} if token else {})}
        page = client.get("/v1/batchPredictionJobs", params=params).json()
        seen += [job["id"] for job in page["batchPredictionJobs"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert seen == newest_first

    mine = client.get("/v1/batchPredictionJobs", params={"model": model_id, "pageSize": 2}).json()
    assert [job["id"] for job in mine["batchPredictionJobs"]] == [made[3], made[2]]
    rest = client.get(
        "/v1/batchPredictionJobs",
        params={"model": model_id, "pageSize": 2, "pageToken": mine["nextPageToken"]},
    ).json()
    assert [job["id"] for job in rest["batchPredictionJobs"]] == [made[0]]
    assert rest["nextPageToken"] is None
    error_of(
        client.get("/v1/batchPredictionJobs", params={"pageToken": mine["nextPageToken"]}),
        400,
        "INVALID_ARGUMENT",
    )

    client.post(f"/v1/batchPredictionJobs/{made[1]}:cancel")
    cancelled = client.get(
        "/v1/batchPredictionJobs", params={"state": "JOB_STATE_CANCELLED"}
    ).json()
    assert [job["id"] for job in cancelled["batchPredictionJobs"]] == [made[1]]
    pending = client.get("/v1/batchPredictionJobs", params={"state": "JOB_STATE_PENDING"}).json()
    assert len(pending["batchPredictionJobs"]) == 3
    error_of(
        client.get("/v1/batchPredictionJobs", params={"state": "QUEUED"}), 400, "INVALID_ARGUMENT"
    )
    error_of(client.get("/v1/batchPredictionJobs", params={"pageSize": 0}), 400, "INVALID_ARGUMENT")


def test_cancel_a_pending_job_and_refuse_a_finished_one(client, run_jobs, model_id, import_root):
    path = import_root / "one.jsonl"
    path.write_text(jsonl(write_photos(import_root, [11])))
    job = create(client, model=model_id, inputConfig=file_input(path))
    cancelled = client.post(f"/v1/batchPredictionJobs/{job['id']}:cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "JOB_STATE_CANCELLED"
    assert cancelled.json()["error"]["status"] == "CANCELLED"
    again = client.post(f"/v1/batchPredictionJobs/{job['id']}:cancel").json()
    assert again["state"] == "JOB_STATE_CANCELLED"
    assert run_jobs() == 0
    assert results(client, job["id"]) == []

    # The generic operation cancel is the same thing.
    other = create(client, model=model_id, inputConfig=file_input(path))
    assert client.post(f"/v1/{other['operationName']}:cancel").status_code == 200
    assert client.get(f"/v1/batchPredictionJobs/{other['id']}").json()["state"] == (
        "JOB_STATE_CANCELLED"
    )

    finished = create(client, model=model_id, inputConfig=file_input(path))
    assert run_jobs() == 1
    error = error_of(
        client.post(f"/v1/batchPredictionJobs/{finished['id']}:cancel"), 400, "FAILED_PRECONDITION"
    )
    assert "JOB_STATE_SUCCEEDED" in error["message"]
    assert len(results(client, finished["id"])) == 1


def test_a_bad_upload_is_refused_naming_the_form_field(client, model_id, settings):
    path = "/v1/batchPredictionJobs"
    form = {"displayName": "x", "model": model_id}
    good = jsonl(["gs://b/a.jpg"]).encode()
    cases = [
        ({"files": {"attachment": ("list.jsonl", good)}, "data": form}, 400, "file:"),
        ({"data": form}, 400, "multipart/form-data"),
        ({"files": {"file": ("list.txt", good)}, "data": form}, 400, "instancesFormat"),
        (
            {"files": {"file": ("list.jsonl", good)}, "data": {**form, "colour": "red"}},
            400,
            "colour",
        ),
        (
            {"files": {"file": ("list.jsonl", good)}, "data": {**form, "maxPredictions": "0"}},
            400,
            "maxPredictions",
        ),
        (
            {"files": {"file": ("list.jsonl", good)}, "data": {"model": model_id}},
            400,
            "displayName",
        ),
    ]
    for request, code, named in cases:
        response = client.post(path, **request)
        assert response.status_code == code, (request, response.text)
        assert named in response.json()["error"]["message"], (request, response.text)

    client.app.state.settings = settings.model_copy(
        update={"batch_prediction_max_input_bytes": 1024}
    )
    try:
        big = jsonl([f"gs://b/{i}.jpg" for i in range(100)]).encode()
        response = client.post(path, files={"file": ("list.jsonl", big)}, data=form)
        error = error_of(response, 413, "OUT_OF_RANGE")
        assert "BATCH_PREDICTION_MAX_INPUT_BYTES" in error["message"]
    finally:
        client.app.state.settings = settings
    assert client.get(path).json()["batchPredictionJobs"] == []

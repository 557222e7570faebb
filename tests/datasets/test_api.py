"""Datasets over HTTP: resources, import as an operation, browsing, labelling, stats, export."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from typing import Any

import pytest
from PIL import Image

from tests.datasets.conftest import make_image, make_zip


def create_dataset(client, name: str = "birds") -> str:
    response = client.post("/v1/datasets", json={"displayName": name, "description": "d"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def import_file(
    client, run_jobs, dataset_id: str, content: bytes, *, name="data.zip", strict=False
) -> dict[str, Any]:
    response = client.post(
        f"/v1/datasets/{dataset_id}:import",
        files={"file": (name, content)},
        data={"strict": "true" if strict else "false"},
    )
    assert response.status_code == 200, response.text
    operation = response.json()
    assert operation["name"] == f"operations/{operation['id']}"
    assert operation["metadata"]["kind"] == "datasets.import"
    run_jobs()
    return client.get(f"/v1/operations/{operation['id']}").json()


def all_images(client, dataset_id: str, **params: Any) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = []
    token = None
    while True:
        query = {**params, "pageSize": 100, **({"pageToken": token} if token else {})}
        body = client.get(f"/v1/datasets/{dataset_id}/images", params=query).json()
        images += body["images"]
        token = body.get("nextPageToken")
        if not token:
            return images


def blob_files(settings) -> list[str]:
    from pathlib import Path

    root = Path(settings.blob_url.removeprefix("file://"))
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".~blob.")
    )


SAMPLE_CSV = "\r\n".join(
    [
        "TRAIN,images/a.jpg,bird,0.1,0.1,,,0.5,0.5,,",
        "train,images/a.jpg,bird,0.6,0.6,,,0.9,0.9,,",
        'TRAINING,images/b.jpg,"big, bird",0.2,0.2,0.8,0.2,0.8,0.8,0.2,0.8',
        "VALIDATION,images/c.jpg,cat,0.1,0.2,,,0.3,0.4,,",
        "test,images/d.jpg,,,,,,,,,",
        "images/e.jpg,cat,0.1,0.1,,,0.2,0.2,,",
        "UNASSIGNED,images/f.jpg",
    ]
)


@pytest.fixture
def sample_zip() -> bytes:
    files: dict[str, bytes | str] = {
        f"images/{name}.jpg": make_image(seed) for seed, name in enumerate("abcdef")
    }
    files["images/unlabelled.jpg"] = make_image(99)
    files["labels.csv"] = "\ufeff" + SAMPLE_CSV
    return make_zip(files)


def test_dataset_crud_and_counts(client):
    dataset_id = create_dataset(client, "first")
    body = client.get(f"/v1/datasets/{dataset_id}").json()
    assert body["name"] == f"datasets/{dataset_id}"
    assert (body["imageCount"], body["labeledImageCount"], body["boxCount"], body["labels"]) == (
        0,
        0,
        0,
        [],
    )
    patched = client.patch(f"/v1/datasets/{dataset_id}", json={"displayName": "renamed"}).json()
    assert patched["displayName"] == "renamed" and patched["description"] == "d"
    assert client.patch(f"/v1/datasets/{dataset_id}", json={"displayName": " "}).status_code == 400
    assert client.post("/v1/datasets", json={}).status_code == 400
    second = create_dataset(client, "second")
    listed = client.get("/v1/datasets", params={"pageSize": 1}).json()
    assert [d["id"] for d in listed["datasets"]] == [second]
    rest = client.get("/v1/datasets", params={"pageToken": listed["nextPageToken"]}).json()
    assert [d["id"] for d in rest["datasets"]] == [dataset_id]
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 200
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 404
    assert client.get("/v1/datasets/nope").json()["error"]["status"] == "NOT_FOUND"


def test_zip_import_reads_every_csv_variant(client, run_jobs, sample_zip):
    dataset_id = create_dataset(client)
    operation = import_file(client, run_jobs, dataset_id, sample_zip)
    assert operation["done"] and operation["metadata"]["state"] == "SUCCEEDED", operation
    result = operation["response"]
    assert result["rowsRead"] == 7
    assert result["errorCount"] == 0
    progress = operation["metadata"]["progressDetails"]
    assert (progress["rowsRead"], progress["imagesStored"], progress["errors"]) == (7, 7, 0)
    assert result["importedImageCount"] == 7
    assert result["unlabeledImageCount"] == 1
    assert result["importedBoxCount"] == 5
    dataset = client.get(f"/v1/datasets/{dataset_id}").json()
    assert dataset["updateTime"] > dataset["createTime"]
    assert dataset["imageCount"] == 7
    assert dataset["labeledImageCount"] == 6
    assert dataset["boxCount"] == 5
    assert dataset["labels"] == ["big, bird", "bird", "cat"]

    by_uri = {image["sourceUri"]: image for image in all_images(client, dataset_id)}
    assert by_uri["images/a.jpg"]["split"] == "TRAIN"
    assert by_uri["images/a.jpg"]["boxCount"] == 2
    assert by_uri["images/b.jpg"]["split"] == "TRAIN"
    assert by_uri["images/c.jpg"]["split"] == "VALIDATION"
    assert by_uri["images/d.jpg"]["split"] == "TEST"
    assert by_uri["images/d.jpg"]["labeled"] is True and by_uri["images/d.jpg"]["boxCount"] == 0
    assert by_uri["images/unlabelled.jpg"]["labeled"] is False
    b = client.get(f"/v1/datasets/{dataset_id}/images/{by_uri['images/b.jpg']['id']}").json()
    assert b["boxes"] == [
        {"label": "big, bird", "xMin": 0.2, "yMin": 0.2, "xMax": 0.8, "yMax": 0.8}
    ]


def test_reimport_is_idempotent(client, run_jobs, sample_zip, settings):
    dataset_id = create_dataset(client)
    import_file(client, run_jobs, dataset_id, sample_zip)
    before = client.get(f"/v1/datasets/{dataset_id}").json()
    files_before = blob_files(settings)
    again = import_file(client, run_jobs, dataset_id, sample_zip)["response"]
    assert again["importedBoxCount"] == 0
    assert again["newImageCount"] == 0
    after = client.get(f"/v1/datasets/{dataset_id}").json()
    for key in ("imageCount", "labeledImageCount", "boxCount", "labels"):
        assert after[key] == before[key]
    assert blob_files(settings) == files_before


def test_same_content_under_two_uris_is_one_image_with_merged_boxes(client, run_jobs):
    picture = make_image(5)
    archive = make_zip(
        {
            "x.jpg": picture,
            "copy/y.jpg": picture,
            "labels.csv": "TRAIN,x.jpg,dog,0.1,0.1,,,0.4,0.4,,\n"
            "TRAIN,copy/y.jpg,dog,0.5,0.5,,,0.9,0.9,,\n",
        }
    )
    dataset_id = create_dataset(client)
    result = import_file(client, run_jobs, dataset_id, archive)["response"]
    assert result["importedImageCount"] == 1
    [image] = all_images(client, dataset_id)
    assert image["boxCount"] == 2


def test_rows_without_ml_use_get_a_deterministic_80_10_10_split(client, run_jobs):
    names = [f"img{i}.jpg" for i in range(60)]
    files: dict[str, bytes | str] = {
        name: make_image(1000 + i, size=(24, 24)) for i, name in enumerate(names)
    }
    files["labels.csv"] = "\n".join(f"{name},thing,0.1,0.1,,,0.9,0.9,," for name in names)
    archive = make_zip(files)
    first = create_dataset(client, "one")
    second = create_dataset(client, "two")
    import_file(client, run_jobs, first, archive)
    import_file(client, run_jobs, second, archive)
    splits_one = {i["sha256"]: i["split"] for i in all_images(client, first)}
    splits_two = {i["sha256"]: i["split"] for i in all_images(client, second)}
    assert splits_one == splits_two
    counts = {s: list(splits_one.values()).count(s) for s in ("TRAIN", "VALIDATION", "TEST")}
    assert counts["TRAIN"] > 35 and counts["VALIDATION"] >= 1 and counts["TEST"] >= 1


def test_bad_rows_are_reported_and_good_rows_kept(client, run_jobs, settings):
    archive = make_zip(
        {
            "a.jpg": make_image(1),
            "b.jpg": make_image(2),
            "labels.csv": "\n".join(
                [
                    "TRAIN,a.jpg,cat,0.1,0.1,,,0.5,0.5,,",
                    "TRAIN,b.jpg,cat,0.6,0.1,,,0.5,0.5,,",
                    "TRAIN,missing.jpg,cat,0.1,0.1,,,0.5,0.5,,",
                    "TRAIN,a.jpg,cat,abc,0.1,,,0.5,0.5,,",
                ]
            ),
        }
    )
    dataset_id = create_dataset(client)
    result = import_file(client, run_jobs, dataset_id, archive)["response"]
    assert result["errorCount"] == 3
    errors = {(e["row"], e["field"]) for e in result["errors"]}
    assert (2, "X_MIN") in errors or (2, "X_MAX") in errors
    assert (3, "IMAGE_URI") in errors
    assert (4, "X_MIN") in errors
    assert any("missing.jpg" in e["message"] for e in result["errors"])
    dataset = client.get(f"/v1/datasets/{dataset_id}").json()
    assert dataset["imageCount"] == 1 and dataset["boxCount"] == 1
    # b.jpg was fetched and stored, but all its rows failed: it must not linger.
    assert len([f for f in blob_files(settings) if f.startswith("images/")]) == 1


def test_strict_import_refuses_the_whole_file_and_leaves_nothing(client, run_jobs, settings):
    archive = make_zip(
        {
            "a.jpg": make_image(1),
            "labels.csv": "TRAIN,a.jpg,cat,0.1,0.1,,,0.5,0.5,,\n"
            "TRAIN,a.jpg,cat,0.9,0.1,,,0.5,0.5,,\n",
        }
    )
    dataset_id = create_dataset(client)
    operation = import_file(client, run_jobs, dataset_id, archive, strict=True)
    assert operation["metadata"]["state"] == "FAILED"
    assert operation["error"]["status"] == "INVALID_ARGUMENT"
    assert "row 2" in operation["error"]["message"]
    assert client.get(f"/v1/datasets/{dataset_id}").json()["imageCount"] == 0
    assert [f for f in blob_files(settings) if not f.startswith("_")] == []


def test_import_needs_a_file_or_uris(client):
    dataset_id = create_dataset(client)
    response = client.post(
        f"/v1/datasets/{dataset_id}:import", content=b"x", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400
    response = client.post(f"/v1/datasets/{dataset_id}:import", json={"uris": []})
    assert response.status_code == 400
    assert "uris" in response.json()["error"]["message"]
    response = client.post(f"/v1/datasets/{dataset_id}:import", json={"uris": ["http://x/y.csv"]})
    assert response.status_code == 400
    assert (
        client.post("/v1/datasets/nope:import", json={"uris": ["gs://b/x.csv"]}).status_code == 404
    )


def test_browse_filters_and_bytes(client, run_jobs, sample_zip):
    dataset_id = create_dataset(client)
    import_file(client, run_jobs, dataset_id, sample_zip)
    validation = all_images(client, dataset_id, split="VALIDATION")
    assert "images/c.jpg" in {i["sourceUri"] for i in validation}
    assert {i["split"] for i in validation} == {"VALIDATION"}
    assert len(validation) < 7
    assert {i["sourceUri"] for i in all_images(client, dataset_id, label="cat")} == {
        "images/c.jpg",
        "images/e.jpg",
    }
    assert {i["sourceUri"] for i in all_images(client, dataset_id, labeled="false")} == {
        "images/unlabelled.jpg"
    }
    assert {i["sourceUri"] for i in all_images(client, dataset_id, negative="true")} == {
        "images/d.jpg",
        "images/f.jpg",
    }
    page = client.get(f"/v1/datasets/{dataset_id}/images", params={"pageSize": 3}).json()
    assert len(page["images"]) == 3 and page["nextPageToken"]
    image = page["images"][0]
    content = client.get(f"/v1/datasets/{dataset_id}/images/{image['id']}:content")
    assert content.status_code == 200
    assert content.headers["content-type"] == "image/jpeg"
    import hashlib

    assert hashlib.sha256(content.content).hexdigest() == image["sha256"]
    thumb = client.get(f"/v1/datasets/{dataset_id}/images/{image['id']}:thumbnail")
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    assert client.get(f"/v1/datasets/{dataset_id}/images/nope").status_code == 404


def test_labelling_replaces_boxes_and_marks_negatives(client, run_jobs, sample_zip):
    dataset_id = create_dataset(client)
    import_file(client, run_jobs, dataset_id, sample_zip)
    [image] = all_images(client, dataset_id, labeled="false")
    url = f"/v1/datasets/{dataset_id}/images/{image['id']}"
    boxes = [{"label": "owl", "xMin": 0.1, "yMin": 0.2, "xMax": 0.3, "yMax": 0.4}]
    labelled = client.put(f"{url}/annotations", json={"boxes": boxes}).json()
    assert labelled["labeled"] is True
    assert labelled["boxes"] == boxes
    assert "owl" in client.get(f"/v1/datasets/{dataset_id}").json()["labels"]
    bad = client.put(
        f"{url}/annotations",
        json={"boxes": [{"label": "owl", "xMin": 0.5, "yMin": 0.2, "xMax": 0.3, "yMax": 0.4}]},
    )
    assert bad.status_code == 400
    assert "boxes[0]" in bad.json()["error"]["message"]
    too_long = client.put(
        f"{url}/annotations",
        json={"boxes": [{**boxes[0], "label": "x" * 65}]},
    )
    assert too_long.status_code == 400
    assert client.get(url).json()["boxes"] == boxes, (
        "a refused change leaves the boxes as they were"
    )
    negative = client.put(f"{url}/annotations", json={"boxes": []}).json()
    assert negative["boxes"] == [] and negative["labeled"] is True
    moved = client.patch(url, json={"split": "TEST"}).json()
    assert moved["split"] == "TEST"
    assert client.patch(url, json={"split": "HOLDOUT"}).status_code == 400


def test_upload_images_keeps_good_files_and_names_bad_ones(client):
    dataset_id = create_dataset(client)
    response = client.post(
        f"/v1/datasets/{dataset_id}/images",
        files=[
            ("files", ("one.png", make_image(1, fmt="PNG"))),
            ("files", ("two.jpg", make_image(2))),
            ("files", ("notes.txt", b"not an image")),
        ],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2
    assert {i["format"] for i in body["images"]} == {"PNG", "JPEG"}
    assert all(i["labeled"] is False for i in body["images"])
    assert [e["file"] for e in body["errors"]] == ["notes.txt"]
    only_bad = client.post(
        f"/v1/datasets/{dataset_id}/images", files=[("files", ("x.bin", b"\x00\x01"))]
    )
    assert only_bad.status_code == 400
    assert "x.bin" in only_bad.json()["error"]["message"]


def test_delete_removes_blobs_only_when_no_dataset_uses_them(
    client, run_jobs, sample_zip, settings
):
    first = create_dataset(client, "one")
    second = create_dataset(client, "two")
    import_file(client, run_jobs, first, sample_zip)
    import_file(client, run_jobs, second, sample_zip)
    image = all_images(client, first)[0]
    client.get(f"/v1/datasets/{first}/images/{image['id']}:thumbnail")
    stored = [f for f in blob_files(settings) if f.startswith("images/")]
    assert len(stored) == 7
    client.delete(f"/v1/datasets/{first}")
    run_jobs()
    assert [f for f in blob_files(settings) if f.startswith("images/")] == stored
    client.delete(f"/v1/datasets/{second}")
    run_jobs()
    assert [f for f in blob_files(settings) if not f.startswith("_")] == []


def test_stats_and_readiness_warnings(client, run_jobs, sample_zip):
    dataset_id = create_dataset(client)
    import_file(client, run_jobs, dataset_id, sample_zip)
    stats = client.get(f"/v1/datasets/{dataset_id}/stats").json()
    assert stats["imageCount"] == 7
    assert stats["unlabeledImageCount"] == 1
    assert stats["negativeImageCount"] == 2
    assert stats["boxCount"] == 5
    bird = next(label for label in stats["labels"] if label["label"] == "bird")
    assert bird["images"]["train"] == 1 and bird["boxes"]["train"] == 2
    codes = {(w["code"], w.get("label")) for w in stats["warnings"]}
    assert ("FEW_IMAGES", "bird") in codes
    assert ("SPLIT_WITHOUT_LABEL", "bird") in codes
    assert set(stats["boxAreaQuantiles"]) == {"q0", "q10", "q25", "q50", "q75", "q90", "q100"}
    few = next(w for w in stats["warnings"] if w["code"] == "FEW_IMAGES")
    assert "at least 10" in few["message"] and "100+" in few["message"]


def test_training_refuses_a_dataset_naming_the_label(client, run_jobs, session_factory):
    from app.datasets import service
    from app.errors import FailedPrecondition

    dataset_id = create_dataset(client)
    with session_factory() as session, pytest.raises(FailedPrecondition, match="TRAIN"):
        service.check_trainable(session, dataset_id=dataset_id)
    archive = make_zip(
        {
            "a.jpg": make_image(1),
            "b.jpg": make_image(2),
            "labels.csv": "TRAIN,a.jpg,dog,0.1,0.1,,,0.5,0.5,,\n"
            "VALIDATION,b.jpg,cat,0.1,0.1,,,0.5,0.5,,\n",
        }
    )
    import_file(client, run_jobs, dataset_id, archive)
    with session_factory() as session, pytest.raises(FailedPrecondition, match="'cat'"):
        service.check_trainable(session, dataset_id=dataset_id)
    image = next(i for i in all_images(client, dataset_id) if i["sourceUri"] == "b.jpg")
    client.patch(f"/v1/datasets/{dataset_id}/images/{image['id']}", json={"split": "TRAIN"})
    with session_factory() as session:
        service.check_trainable(session, dataset_id=dataset_id)


def test_zip_export_round_trips(client, run_jobs, sample_zip):
    source = create_dataset(client, "source")
    import_file(client, run_jobs, source, sample_zip)
    exported = client.get(f"/v1/datasets/{source}:export", params={"format": "zip"})
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/zip"
    copy = create_dataset(client, "copy")
    assert import_file(client, run_jobs, copy, exported.content)["response"]["errorCount"] == 0

    def snapshot(dataset_id: str) -> dict[str, tuple[str, list[tuple]]]:
        result = {}
        for image in all_images(client, dataset_id):
            full = client.get(f"/v1/datasets/{dataset_id}/images/{image['id']}").json()
            boxes = sorted(
                (b["label"], b["xMin"], b["yMin"], b["xMax"], b["yMax"]) for b in full["boxes"]
            )
            result[image["sha256"]] = (image["split"], boxes)
        return result

    assert snapshot(copy) == snapshot(source)


def test_csv_and_jsonl_export_reference_stored_blobs(client, run_jobs, sample_zip, settings):
    dataset_id = create_dataset(client)
    import_file(client, run_jobs, dataset_id, sample_zip)
    text = client.get(f"/v1/datasets/{dataset_id}:export", params={"format": "csv"}).text
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 5 + 3  # five boxes, three images without boxes
    assert all(row[1].startswith("file://") for row in rows)
    lines = client.get(
        f"/v1/datasets/{dataset_id}:export", params={"format": "jsonl"}
    ).text.splitlines()
    assert len(lines) == 7
    record = json.loads(lines[0])
    assert record["imageGcsUri"].startswith("file://")


def test_csv_export_cannot_carry_a_formula(client, run_jobs):
    archive = make_zip(
        {"a.jpg": make_image(1), "labels.csv": 'TRAIN,a.jpg,"=HYPERLINK(1)",0.1,0.1,,,0.5,0.5,,\n'}
    )
    dataset_id = create_dataset(client)
    import_file(client, run_jobs, dataset_id, archive)
    assert client.get(f"/v1/datasets/{dataset_id}").json()["labels"] == ["=HYPERLINK(1)"]
    text = client.get(f"/v1/datasets/{dataset_id}:export", params={"format": "csv"}).text
    for row in csv.reader(io.StringIO(text)):
        assert not any(field.startswith(("=", "+", "-", "@")) for field in row)
    exported = client.get(f"/v1/datasets/{dataset_id}:export", params={"format": "zip"}).content
    copy = create_dataset(client, "copy")
    import_file(client, run_jobs, copy, exported)
    assert client.get(f"/v1/datasets/{copy}").json()["labels"] == ["=HYPERLINK(1)"]
    with zipfile.ZipFile(io.BytesIO(exported)) as archive_file:
        assert archive_file.read("labels.csv").decode().count("'=HYPERLINK") == 1

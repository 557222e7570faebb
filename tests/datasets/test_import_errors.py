"""Malformed imports, end to end: each gives its documented row error or a refused operation,
and neither the database nor the blob store keeps anything from the rejected parts."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.datasets.conftest import make_image, make_zip, png_of_zeros
from tests.datasets.test_api import all_images, blob_files, create_dataset, import_file

GOOD_ROW = "TRAIN,good.jpg,cat,0.1,0.1,,,0.5,0.5,,"


@dataclass(frozen=True)
class Case:
    """A zip whose labels.csv (or labels.jsonl) has one good row, then the bad part."""

    index: str
    files: dict[str, bytes] = field(default_factory=dict)
    jsonl: bool = False
    row: int | None = None  # the row reported, or None when the whole import is refused
    field: str | None = None
    fragment: str = ""
    errors: int = 1


def jpeg(seed: int) -> bytes:
    return make_image(seed)


def truncated_jpeg() -> bytes:
    return make_image(7, size=(128, 96))[:-200]


def tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="TIFF")
    return out.getvalue()


def six_hundred_boxes() -> str:
    return "\n".join(
        f"TRAIN,many.jpg,dot,{(i % 30) / 40:.4f},{(i // 30) / 40:.4f},,,"
        f"{(i % 30) / 40 + 0.02:.4f},{(i // 30) / 40 + 0.02:.4f},,"
        for i in range(600)
    )


CASES = [
    Case("TRAIN,good.jpg,cat,abc,0.1,,,0.5,0.5,,", row=2, field="X_MIN", fragment="abc"),
    Case("TRAIN,good.jpg,cat,nan,0.1,,,0.5,0.5,,", row=2, field="X_MIN", fragment="nan"),
    Case("TRAIN,good.jpg,cat,inf,0.1,,,0.5,0.5,,", row=2, field="X_MIN", fragment="inf"),
    Case("TRAIN,good.jpg,cat,0.1,0.1,,,1.5,0.5,,", row=2, field="X_MAX", fragment="1.5"),
    Case("TRAIN,good.jpg,cat,-0.2,0.1,,,0.5,0.5,,", row=2, field="X_MIN", fragment="-0.2"),
    Case("TRAIN,good.jpg,cat,0.5,0.1,,,0.5,0.6,,", row=2, field="X_MIN", fragment="not less"),
    Case("TRAIN,good.jpg,cat,0.1,0.7,,,0.5,0.6,,", row=2, field="Y_MIN", fragment="not less"),
    Case("TRAIN,good.jpg,cat,0.1,0.1,0.5,0.5", row=2, field="row", fragment="got 7"),
    Case("TRAIN_SET,good.jpg,cat,0.1,0.1,,,0.5,0.5,,", row=2, field="ML_USE", fragment="TRAIN_SET"),
    Case("TRAIN,good.jpg,,0.1,0.1,,,0.5,0.5,,", row=2, field="LABEL", fragment="label"),
    Case("TRAIN,good.jpg,cat,,,,,,,,", row=2, field="X_MIN", fragment="no box"),
    Case("TRAIN,good.jpg,cat,0.1,0.1,,,0.5,,,", row=2, field="Y_MAX", fragment="missing"),
    Case(f"TRAIN,good.jpg,{'x' * 65},0.1,0.1,,,0.5,0.5,,", row=2, field="LABEL", fragment="64"),
    Case("TRAIN,good.jpg,ca\x07t,0.1,0.1,,,0.5,0.5,,", row=2, field="LABEL", fragment="control"),
    Case("TRAIN,,cat,0.1,0.1,,,0.5,0.5,,", row=2, field="IMAGE_URI", fragment="empty"),
    Case(
        "TRAIN,missing.jpg,cat,0.1,0.1,,,0.5,0.5,,", row=2, field="IMAGE_URI", fragment="not found"
    ),
    Case(
        "TRAIN,broken.jpg,cat,0.1,0.1,,,0.5,0.5,,",
        files={"broken.jpg": truncated_jpeg()},
        row=2,
        field="IMAGE_URI",
        fragment="truncated",
    ),
    Case(
        "TRAIN,empty.jpg,cat,0.1,0.1,,,0.5,0.5,,",
        files={"empty.jpg": b""},
        row=2,
        field="IMAGE_URI",
        fragment="empty",
    ),
    Case(
        "TRAIN,notes.jpg,cat,0.1,0.1,,,0.5,0.5,,",
        files={"notes.jpg": b"just some text, not a picture"},
        row=2,
        field="IMAGE_URI",
        fragment="not an image",
    ),
    Case(
        "TRAIN,scan.tif,cat,0.1,0.1,,,0.5,0.5,,",
        files={"scan.tif": tiff()},
        row=2,
        field="IMAGE_URI",
        fragment="TIFF",
    ),
    Case(
        "TRAIN,bomb.png,cat,0.1,0.1,,,0.5,0.5,,",
        files={"bomb.png": png_of_zeros(30_000, 30_000)},
        row=2,
        field="IMAGE_URI",
        fragment="decompression bomb",
    ),
    Case(
        "TRAIN,huge.jpg,cat,0.1,0.1,,,0.5,0.5,,",
        files={"huge.jpg": b"\xff\xd8\xff\xe0" + os.urandom(31 * 1024 * 1024)},
        row=2,
        field="IMAGE_URI",
        fragment="limit",
    ),
    Case(
        six_hundred_boxes(),
        files={"many.jpg": jpeg(3)},
        row=502,
        field="row",
        fragment="more than 500 boxes",
        errors=100,
    ),
    Case(
        "TRAIN,http://169.254.169.254/latest/meta-data,cat,0.1,0.1,,,0.5,0.5,,",
        row=2,
        field="IMAGE_URI",
        fragment="http://",
    ),
    Case(
        "TRAIN,https://169.254.169.254/computeMetadata/v1/x.jpg,cat,0.1,0.1,,,0.5,0.5,,",
        row=2,
        field="IMAGE_URI",
        fragment="https",
    ),
    Case("TRAIN,/etc/passwd,cat,0.1,0.1,,,0.5,0.5,,", row=2, field="IMAGE_URI", fragment="local"),
    Case("TRAIN,../good.jpg,cat,0.1,0.1,,,0.5,0.5,,", row=2, field="IMAGE_URI", fragment=".."),
    Case("TEST,good.jpg,cat,0.6,0.6,,,0.9,0.9,,", row=2, field="ML_USE", fragment="conflicts"),
    Case(
        '{"imageGcsUri": "good.jpg", "boundingBoxAnnotations": [{"displayName": "cat", '
        '"xMin": 0.1, "yMin": 0.1, "xMax": 0.5, "yMax": 0.5}]}\n{"imageGcsUri": ',
        jsonl=True,
        row=2,
        field="line",
        fragment="JSON",
    ),
    Case(
        '{"imageGcsUri": "good.jpg", "boundingBoxAnnotations": [{"displayName": "cat", '
        '"xMin": 0.1, "yMin": 0.1, "xMax": 0.5, "yMax": 0.5}]}\n'
        '{"imageGcsUri": "good.jpg", "boundingBoxAnnotations": [{"displayName": "cat", '
        '"xMin": 0.9, "yMin": 0.1, "xMax": 0.5, "yMax": 0.5}]}',
        jsonl=True,
        row=2,
        field="boundingBoxAnnotations[0].xMin",
        fragment="not less",
    ),
]


def zip_for(case: Case) -> bytes:
    files: dict[str, bytes | str] = {"good.jpg": jpeg(1), **case.files}
    if case.jsonl:
        files["labels.jsonl"] = case.index
    else:
        files["labels.csv"] = f"{GOOD_ROW}\n{case.index}\n"
    out = io.BytesIO()
    # Stored, not deflated: the 31 MB random image must not look like a zip bomb either.
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def stored_images(settings) -> list[str]:
    return [f for f in blob_files(settings) if f.startswith("images/")]


@pytest.mark.parametrize("case", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_row_is_reported_and_nothing_of_it_is_kept(client, run_jobs, settings, case):
    dataset_id = create_dataset(client)
    operation = import_file(client, run_jobs, dataset_id, zip_for(case))
    assert operation["metadata"]["state"] == "SUCCEEDED", operation
    result = operation["response"]
    assert result["errorCount"] == case.errors, result["errors"]
    error = result["errors"][0]
    assert (error["row"], error["field"]) == (case.row, case.field), error
    assert case.fragment in error["message"], error["message"]
    images = all_images(client, dataset_id)
    good_only = len(case.files) == 0 or case.row != 502
    if good_only:
        assert [image["sourceUri"] for image in images] == ["good.jpg"]
        assert len(stored_images(settings)) == 1
    boxes = client.get(f"/v1/datasets/{dataset_id}").json()["boxCount"]
    assert boxes == (1 if good_only else 1 + 500)


def test_600_boxes_keep_the_first_500(client, run_jobs, settings):
    case = next(c for c in CASES if c.row == 502)
    dataset_id = create_dataset(client)
    import_file(client, run_jobs, dataset_id, zip_for(case))
    many = next(i for i in all_images(client, dataset_id) if i["sourceUri"] == "many.jpg")
    assert many["boxCount"] == 500


def refused(client, run_jobs, settings, archive: bytes, fragment: str) -> None:
    dataset_id = create_dataset(client)
    operation = import_file(client, run_jobs, dataset_id, archive)
    assert operation["metadata"]["state"] == "FAILED", operation
    assert operation["error"]["status"] == "INVALID_ARGUMENT"
    assert fragment in operation["error"]["message"], operation["error"]["message"]
    assert operation["metadata"]["attempts"] == 1, "a bad file is not retried"
    assert client.get(f"/v1/datasets/{dataset_id}").json()["imageCount"] == 0
    assert stored_images(settings) == []
    assert [f for f in blob_files(settings) if f.startswith("imports/")] == []


def test_zip_with_parent_paths_is_refused(client, run_jobs, settings):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("good.jpg", jpeg(1))
        archive.writestr("../escape.jpg", jpeg(2))
        archive.writestr("labels.csv", GOOD_ROW)
    refused(client, run_jobs, settings, out.getvalue(), "..")


def test_zip_bomb_is_refused(client, run_jobs, settings):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("good.jpg", jpeg(1))
        archive.writestr("zeros.jpg", b"\0" * (64 * 1024 * 1024))
        archive.writestr("labels.csv", GOOD_ROW)
    refused(client, run_jobs, settings, out.getvalue(), "200")


def test_non_utf8_csv_is_refused_naming_the_line(client, run_jobs, settings):
    index = f"{GOOD_ROW}\nTRAIN,good.jpg,caf\xe9,0.1,0.1,,,0.5,0.5,,\n".encode("latin-1")
    refused(
        client, run_jobs, settings, make_zip({"good.jpg": jpeg(1), "labels.csv": index}), "line 2"
    )


def test_a_file_that_only_looks_like_a_zip_is_refused(client, run_jobs, settings):
    refused(client, run_jobs, settings, b"PK\x03\x04" + b"\0" * 100, "zip")


def test_strict_mode_refuses_every_bad_case_wholesale(client, run_jobs, settings):
    for case in CASES[:6]:
        dataset_id = create_dataset(client)
        response = client.post(
            f"/v1/datasets/{dataset_id}:import",
            files={"file": ("x.zip", zip_for(case))},
            data={"strict": "true"},
        )
        run_jobs()
        operation = client.get(f"/v1/operations/{response.json()['id']}").json()
        assert operation["metadata"]["state"] == "FAILED"
        [detail] = operation["error"]["details"]
        [violation] = detail["fieldViolations"]
        assert violation["field"] == f"row {case.row}: {case.field}"
        assert client.get(f"/v1/datasets/{dataset_id}").json()["imageCount"] == 0
    assert stored_images(settings) == []


def test_request_level_mistakes_are_400(client):
    dataset_id = create_dataset(client)
    no_file = client.post(f"/v1/datasets/{dataset_id}:import", files={"other": ("x", b"1")})
    assert no_file.status_code == 400
    assert "file" in no_file.json()["error"]["message"]
    bad_json = client.post(
        f"/v1/datasets/{dataset_id}:import",
        content=b'{"uris": "gs://b/x.csv"}',
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    assert "uris" in bad_json.json()["error"]["message"]


@pytest.fixture
def import_root(settings, tmp_path: Path) -> Path:
    root = tmp_path / "shared-drive"
    root.mkdir()
    return root


def test_local_uris_work_only_under_the_import_root(
    client, app, run_jobs, settings, import_root, tmp_path
):
    (import_root / "photos").mkdir()
    (import_root / "photos" / "a.jpg").write_bytes(jpeg(1))
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg(2))
    (import_root / "labels.csv").write_text(
        "TRAIN,photos/a.jpg,cat,0.1,0.1,,,0.5,0.5,,\n"
        f"TRAIN,{outside},cat,0.1,0.1,,,0.5,0.5,,\n"
        "TRAIN,../outside.jpg,cat,0.1,0.1,,,0.5,0.5,,\n"
    )
    dataset_id = create_dataset(client)
    uri = str(import_root / "labels.csv")
    # Without an import root, local files cannot be read at all.
    response = client.post(f"/v1/datasets/{dataset_id}:import", json={"uris": [uri]})
    run_jobs()
    operation = client.get(f"/v1/operations/{response.json()['id']}").json()
    assert operation["metadata"]["state"] == "FAILED"
    assert "IMPORT_ROOT" in operation["error"]["message"]

    rooted = settings.model_copy(update={"import_root": import_root})
    from app.jobs.registry import default_registry
    from app.jobs.worker import Worker

    response = client.post(f"/v1/datasets/{dataset_id}:import", json={"uris": [uri]})
    Worker(
        settings=rooted, session_factory=app.state.session_factory, registry=default_registry()
    ).run(stop_when_idle=True)
    result: dict[str, Any] = client.get(f"/v1/operations/{response.json()['id']}").json()[
        "response"
    ]
    assert result["importedImageCount"] == 1
    assert {(e["row"], e["field"]) for e in result["errors"]} == {
        (2, "IMAGE_URI"),
        (3, "IMAGE_URI"),
    }
    assert [i["sourceUri"] for i in all_images(client, dataset_id)] == ["photos/a.jpg"]


def test_import_into_a_dataset_deleted_meanwhile_fails_and_leaves_nothing(
    client, run_jobs, settings
):
    dataset_id = create_dataset(client)
    archive = make_zip({"good.jpg": jpeg(1), "labels.csv": GOOD_ROW})
    response = client.post(f"/v1/datasets/{dataset_id}:import", files={"file": ("x.zip", archive)})
    assert [f for f in blob_files(settings) if f.startswith("imports/")] != []
    client.delete(f"/v1/datasets/{dataset_id}")
    run_jobs()
    operation = client.get(f"/v1/operations/{response.json()['id']}").json()
    assert operation["metadata"]["state"] == "FAILED"
    assert operation["error"]["status"] == "NOT_FOUND"
    assert [f for f in blob_files(settings) if not f.startswith("_")] == []


def test_a_refused_import_never_removes_images_other_datasets_use(client, run_jobs, settings):
    shared = jpeg(1)
    kept = create_dataset(client, "kept")
    import_file(client, run_jobs, kept, make_zip({"good.jpg": shared, "labels.csv": GOOD_ROW}))
    [image] = all_images(client, kept)
    refused_file = make_zip(
        {
            "good.jpg": shared,
            "labels.csv": f"{GOOD_ROW}\nTRAIN,good.jpg,cat,0.9,0.1,,,0.5,0.5,,\n",
        }
    )
    other = create_dataset(client, "other")
    operation = import_file(client, run_jobs, other, refused_file, strict=True)
    assert operation["metadata"]["state"] == "FAILED"
    content = client.get(f"/v1/datasets/{kept}/images/{image['id']}:content")
    assert content.status_code == 200 and content.content == shared
    assert len(stored_images(settings)) == 1


def test_a_cancelled_import_stops_and_leaves_nothing(client, app, settings, session_factory):
    import threading
    import time

    from app.jobs.registry import default_registry
    from app.jobs.worker import Worker

    files: dict[str, bytes | str] = {f"img{i}.jpg": jpeg(100 + i) for i in range(40)}
    files["labels.csv"] = "\n".join(f"TRAIN,img{i}.jpg,cat,0.1,0.1,,,0.5,0.5,," for i in range(40))
    dataset_id = create_dataset(client)
    response = client.post(
        f"/v1/datasets/{dataset_id}:import", files={"file": ("x.zip", make_zip(files))}
    )
    operation_id = response.json()["id"]
    one_row_batches = settings.model_copy(update={"import_batch_rows": 1})
    worker = Worker(
        settings=one_row_batches, session_factory=session_factory, registry=default_registry()
    )
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    deadline = time.monotonic() + 20
    while client.get(f"/v1/operations/{operation_id}").json()["metadata"]["progress"] == 0:
        assert time.monotonic() < deadline, "the import never reported progress"
        time.sleep(0.01)
    assert client.post(f"/v1/operations/{operation_id}:cancel").status_code == 200
    thread.join(30)
    operation = client.get(f"/v1/operations/{operation_id}").json()
    assert operation["metadata"]["state"] == "CANCELLED"
    assert operation["metadata"]["progressDetails"]["rowsRead"] < 40
    assert client.get(f"/v1/datasets/{dataset_id}").json()["imageCount"] == 0
    assert [f for f in blob_files(settings) if not f.startswith("_")] == []
    from sqlalchemy import func, select

    from app.db import Image, ImportRow

    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ImportRow)) == 0
        assert session.scalar(select(func.count()).select_from(Image)) == 0

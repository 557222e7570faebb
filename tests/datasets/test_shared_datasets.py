"""Import the real datasets in ../shared/datasets as zips (CSV inside) and check the counts
against each folder's README. Skipped, saying why, where the folder is absent."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from tests.datasets.conftest import SHARED_DATASETS
from tests.datasets.test_api import create_dataset, import_file

EXPECTED = {"raccoon": (200, 217), "fruit": (300, 582), "bccd": (364, 4886)}


def readme_counts(folder: Path) -> tuple[int, int]:
    text = (folder / "README.md").read_text()
    match = re.search(r"Images:\s*(\d+)\s*\|\s*boxes:\s*(\d+)", text)
    assert match, f"{folder}/README.md does not state 'Images: N | boxes: M'"
    return int(match.group(1)), int(match.group(2))


def distinct_contents(folder: Path) -> int:
    return len({hashlib.sha256(p.read_bytes()).digest() for p in (folder / "images").iterdir()})


def zip_folder(folder: Path, target: Path) -> bytes:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.write(folder / "labels.csv", "labels.csv")
        for image in sorted((folder / "images").iterdir()):
            archive.write(image, f"images/{image.name}")
    return target.read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_dataset_imports_with_the_readme_counts(client, run_jobs, tmp_path, name):
    folder = SHARED_DATASETS / name
    if not (folder / "labels.csv").exists():
        pytest.skip(f"{folder} is absent: the shared datasets are not on this machine")
    images, boxes = readme_counts(folder)
    assert (images, boxes) == EXPECTED[name]
    dataset_id = create_dataset(client, name)
    operation = import_file(
        client, run_jobs, dataset_id, zip_folder(folder, tmp_path / f"{name}.zip")
    )
    assert operation["metadata"]["state"] == "SUCCEEDED", operation.get("error")
    result = operation["response"]
    assert result["errorCount"] == 0, result["errors"][:5]
    assert result["unlabeledImageCount"] == 0
    # Byte-identical photos under two names are one image with their boxes merged (the
    # AutoML contract); raccoon has four such pairs.
    duplicates = images - distinct_contents(folder)
    assert result["duplicateUriCount"] == duplicates
    dataset = client.get(f"/v1/datasets/{dataset_id}").json()
    assert (dataset["imageCount"], dataset["boxCount"]) == (images - duplicates, boxes)
    assert dataset["labeledImageCount"] == images - duplicates
    stats = client.get(f"/v1/datasets/{dataset_id}/stats").json()
    assert sum(stats["imagesBySplit"].values()) == images - duplicates
    assert stats["imagesBySplit"]["train"] > stats["imagesBySplit"]["test"] > 0

"""Fixtures for training tests: generated scenes (shapes on textured backgrounds) imported
into datasets over the API, and a worker to run the queued jobs."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFilter

from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from tests.datasets.conftest import make_zip
from tests.datasets.test_api import create_dataset, import_file

SHAPES = ("circle", "square")


def make_scene(
    seed: int, *, size: tuple[int, int] = (96, 72), shapes: int = 1
) -> tuple[bytes, list[tuple[str, float, float, float, float]]]:
    """A JPEG of ``shapes`` solid shapes on a blurred-noise background, with their boxes
    (label, x_min, y_min, x_max, y_max relative to the image)."""
    rng = random.Random(seed)
    width, height = size
    noise = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    tint = Image.new("RGB", size, tuple(rng.randrange(60, 200) for _ in range(3)))
    image = Image.blend(noise, tint, 0.6).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(image)
    boxes = []
    for _ in range(shapes):
        label = rng.choice(SHAPES)
        side = rng.randrange(min(size) // 4, min(size) // 2)
        x0, y0 = rng.randrange(width - side), rng.randrange(height - side)
        colour = (rng.randrange(200, 256), rng.randrange(0, 60), rng.randrange(0, 60))
        if label == "circle":
            draw.ellipse((x0, y0, x0 + side, y0 + side), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + side, y0 + side), fill=colour[::-1])
        boxes.append((label, x0 / width, y0 / height, (x0 + side) / width, (y0 + side) / height))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue(), boxes


def scene_zip(splits: dict[str, int], *, first_seed: int = 0, negatives: int = 0) -> bytes:
    """A zip with labels.csv: ``splits`` maps ML_USE to a number of one-shape scenes;
    ``negatives`` extra TRAIN images have no boxes."""
    files: dict[str, bytes | str] = {}
    rows = []
    seed = first_seed
    for split, count in splits.items():
        for _ in range(count):
            data, boxes = make_scene(seed)
            name = f"images/{seed}.jpg"
            files[name] = data
            for label, x0, y0, x1, y1 in boxes:
                rows.append(f"{split},{name},{label},{x0:.4f},{y0:.4f},,,{x1:.4f},{y1:.4f},,")
            seed += 1
    for _ in range(negatives):
        data, _ = make_scene(seed, shapes=0)
        name = f"images/{seed}.jpg"
        files[name] = data
        rows.append(f"TRAIN,{name}")
        seed += 1
    files["labels.csv"] = "\n".join(rows)
    return make_zip(files)


@pytest.fixture
def run_jobs(settings, session_factory) -> Callable[[], int]:
    """Run queued jobs in this process until none is left; returns how many ran."""

    def run() -> int:
        worker = Worker(
            settings=settings, session_factory=session_factory, registry=default_registry()
        )
        return worker.run(stop_when_idle=True)

    return run


@pytest.fixture
def make_dataset(client, run_jobs) -> Callable[..., str]:
    """Create a dataset and import generated scenes into it; returns its id."""

    def make(splits: dict[str, int] | None = None, *, name: str = "shapes", **kwargs: Any) -> str:
        dataset_id = create_dataset(client, name)
        archive = scene_zip(splits or {"TRAIN": 8, "VALIDATION": 4, "TEST": 4}, **kwargs)
        operation = import_file(client, run_jobs, dataset_id, archive)
        assert operation["metadata"]["state"] == "SUCCEEDED", operation
        return dataset_id

    return make


def start_training(client, dataset_id: str, **fields: Any) -> dict[str, Any]:
    body = {
        "datasetId": dataset_id,
        "displayName": "shapes detector",
        "modelType": "MOBILE_TF_LOW_LATENCY_1",
        **fields,
    }
    response = client.post("/v1/trainingJobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def epoch_reported(client, training_job_id: str) -> bool:
    """Whether the job's row shows at least one finished epoch."""
    progress = client.get(f"/v1/trainingJobs/{training_job_id}").json()["progress"]
    return bool(progress) and progress["epoch"] >= 1


def read_snapshot(client, training_job_id: str) -> dict[str, Any]:
    blobs = client.app.state.blobs
    return json.loads(blobs.get(f"training/{training_job_id}/snapshot.json"))

"""Small generated detection data: coloured shapes on textured backgrounds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.detector.types import Sample

COLOURS = ((220, 40, 40), (40, 200, 60))  # label 0 red, label 1 green


def shapes_image(seed: int, size: tuple[int, int] = (160, 120)) -> tuple[bytes, Sample]:
    """A JPEG with one to three filled rectangles of two kinds, and its sample."""
    rng = np.random.default_rng(seed)
    width, height = size
    noise = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 4))):
        w, h = rng.integers(20, 60), rng.integers(20, 50)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        label = int(rng.integers(0, 2))
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[label])
        boxes.append([x / width, y / height, (x + w) / width, (y + h) / height])
        labels.append(label)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    sample = Sample(f"img-{seed}", np.array(boxes, np.float32), np.array(labels, np.int64))
    return buffer.getvalue(), sample


class ShapesData:
    def __init__(self, count: int, first_seed: int = 0) -> None:
        self.files: dict[str, bytes] = {}
        self.samples: list[Sample] = []
        for seed in range(first_seed, first_seed + count):
            data, sample = shapes_image(seed)
            self.files[sample.key] = data
            self.samples.append(sample)

    def read(self, key: str) -> bytes:
        return self.files[key]


@pytest.fixture(scope="session")
def shapes() -> ShapesData:
    return ShapesData(24)

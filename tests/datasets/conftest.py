"""Fixtures for dataset tests: generated images and archives, and a worker to run imports."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from app.jobs.registry import default_registry
from app.jobs.worker import Worker

SHARED_DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def make_image(seed: int, *, size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> bytes:
    """A small distinct picture: a coloured shape on a noisy background."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
    draw.rectangle((x0, y0, x0 + size[0] // 3, y0 + size[1] // 3), fill=(rng.randrange(256), 0, 0))
    for _ in range(20):
        draw.point((rng.randrange(size[0]), rng.randrange(size[1])), fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def png_of_zeros(width: int, height: int, *, colour_type: int = 0, bit_depth: int = 1) -> bytes:
    """A valid PNG of black pixels, a few hundred KB however many pixels it declares.

    Decoding it allocates every pixel, which is what a decompression bomb relies on.
    """
    channels = {0: 1, 2: 3}[colour_type]
    row = b"\0" * (1 + (width * channels * bit_depth + 7) // 8)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def make_zip(files: dict[str, bytes | str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


@pytest.fixture
def run_jobs(settings, session_factory) -> Callable[[], int]:
    """Run queued jobs in this process until none is left; returns how many ran."""

    def run() -> int:
        worker = Worker(
            settings=settings, session_factory=session_factory, registry=default_registry()
        )
        return worker.run(stop_when_idle=True)

    return run

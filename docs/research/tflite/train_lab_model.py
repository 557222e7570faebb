"""Train a small detector on generated shapes (rectangle / ellipse / triangle) with the project's
trainer, so int8 and parity checks see a model with realistic outputs. Writes out/trained_model.bin.

usage: train_lab_model.py [BUDGET_SECONDS]
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.detector.trainer import train
from app.detector.types import Sample, TrainConfig

SHAPE_LABELS = ("rectangle", "ellipse", "triangle")


def make_shapes(seed: int, size: int = 320):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(0, 255, 3) * ramp[:, None, None] + rng.uniform(0, 255, 3) * (1 - ramp[None, :, None])
    base = np.clip(base * 0.6 + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for _ in range(rng.integers(1, 6)):
        w, h = rng.integers(24, size // 2, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        x1, y1 = x0 + w, y0 + h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
        boxes.append([x0 / size, y0 / size, (x1 + 1) / size, (y1 + 1) / size])
        labels.append(kind)
    return np.asarray(image), np.array(boxes, np.float32), np.array(labels, np.int64)


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    budget = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0
    store, train_samples, val_samples = {}, [], []
    for i in range(240):
        image, boxes, labels = make_shapes(10_000 + i)
        key = f"img{i}"
        store[key] = png(image)
        (val_samples if i >= 220 else train_samples).append(Sample(key, boxes, labels))
    config = TrainConfig(
        model_type="mobile-low-latency", labels=SHAPE_LABELS, budget_seconds=budget,
        disable_early_stopping=True, threads=2, seed=0,
    )
    start = time.time()
    result = train(config, train_samples, val_samples, store.__getitem__)
    Path("out").mkdir(exist_ok=True)
    Path("out/trained_model.bin").write_bytes(result.model)
    print(f"trained {result.epochs} epochs, {result.steps} steps in {time.time() - start:.0f} s, "
          f"best val mAP50 {result.best_val_map50}, {result.images_per_second:.1f} img/s")


if __name__ == "__main__":
    main()

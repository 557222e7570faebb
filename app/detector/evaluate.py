"""Run a model over labelled samples and score it with the metrics core."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from app.detector import metrics
from app.detector.bundle import load_bundle
from app.detector.data import ImageCache, plain_example
from app.detector.model import Detector
from app.detector.predict import build_model, predict_images
from app.detector.types import Detections, Evaluation, ReadImage, Sample


def to_metric_records(
    samples: Sequence[Sample], detections: Sequence[Detections], sizes: Sequence[tuple[int, int]]
) -> tuple[list[metrics.ImageTruth], list[metrics.ImageDetections]]:
    """Normalized boxes to pixels of each image as displayed (``sizes`` are width, height)."""
    truths, found = [], []
    for sample, detected, (width, height) in zip(samples, detections, sizes, strict=True):
        scale = np.array([width, height, width, height], dtype=np.float64)
        truths.append(
            metrics.ImageTruth(
                boxes=np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4) * scale,
                labels=np.asarray(sample.labels, dtype=np.int64),
            )
        )
        found.append(
            metrics.ImageDetections(
                boxes=detected.boxes.astype(np.float64).reshape(-1, 4) * scale,
                scores=detected.scores.astype(np.float64),
                labels=detected.labels,
            )
        )
    return truths, found


def score(
    truths: Sequence[metrics.ImageTruth],
    found: Sequence[metrics.ImageDetections],
    labels: Sequence[str],
) -> tuple[dict[str, float], dict[str, dict[str, float]], metrics.CocoStats]:
    """COCO figures overall and per label name."""
    stats = metrics.coco_stats(truths, found, num_labels=len(labels))
    per_label = {
        name: dict(zip(metrics.STAT_NAMES, map(float, stats.per_label[k]), strict=True))
        for k, name in enumerate(labels)
    }
    return stats.as_dict(), per_label, stats


def detect(
    model: Detector, samples: Sequence[Sample], cache: ImageCache, *, bf16: bool = False
) -> list[Detections]:
    size = model.spec.input_size
    images = [plain_example(cache[s.key], s, size).image for s in samples]
    return predict_images(model, images, bf16=bf16)


def detect_records(
    model: Detector, samples: Sequence[Sample], cache: ImageCache
) -> tuple[list[metrics.ImageTruth], list[metrics.ImageDetections]]:
    """The samples' truths and the model's detections, in full-resolution pixels for scoring."""
    detections = detect(model, samples, cache)
    sizes = [cache.size_of(sample.key) for sample in samples]
    return to_metric_records(samples, detections, sizes)


def evaluate(model: bytes, samples: Sequence[Sample], read_image: ReadImage) -> Evaluation:
    """Predict every sample with the model file ``model`` and score it (labels from the file)."""
    started = time.monotonic()
    bundle = load_bundle(model)
    network = build_model(bundle)
    cache = ImageCache(samples, read_image, bundle.input_size)
    truths, found = detect_records(network, samples, cache)
    coco, per_label, _ = score(truths, found, bundle.labels)
    vertex = metrics.vertex_metrics(truths, found, label_names=bundle.labels)
    return Evaluation(
        vertex=vertex,
        coco=coco,
        coco_per_label=per_label,
        image_count=len(samples),
        box_count=sum(len(sample.labels) for sample in samples),
        detection_count=sum(len(d.labels) for d in found),
        seconds=time.monotonic() - started,
    )

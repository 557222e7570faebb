"""Run a model over labelled samples and score it with the metrics core."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app.detector import matches, metrics
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


@dataclass(frozen=True)
class Runner:
    """A model file ready to detect: its labels, input size and a batch predict function
    taking uint8 (3, S, S) images already resized to the input."""

    labels: tuple[str, ...]
    input_size: int
    predict: Callable[[Sequence[torch.Tensor]], list[Detections]]


def pytorch_runner(model: bytes) -> Runner:
    bundle = load_bundle(model)
    network = build_model(bundle)
    return Runner(
        labels=bundle.labels,
        input_size=bundle.input_size,
        predict=lambda images: predict_images(network, images),
    )


def onnx_runner(model: bytes) -> Runner:
    from app.detector.export import OnnxPredictor

    predictor = OnnxPredictor(model)
    return Runner(
        labels=predictor.labels, input_size=predictor.input_size, predict=predictor.predict
    )


def tflite_runner(model: bytes) -> Runner:
    from app.detector.tflite import TflitePredictor

    predictor = TflitePredictor(model)
    return Runner(
        labels=predictor.labels, input_size=predictor.input_size, predict=predictor.predict
    )


# How each artifact format is run: evaluating an exported file scores exactly what users
# ship (LiteRT runs both TFLite files, float and integer).
RUNNERS: dict[str, Callable[[bytes], Runner]] = {
    "pytorch": pytorch_runner,
    "onnx": onnx_runner,
    "tflite": tflite_runner,
    "tflite-int8": tflite_runner,
}

# Images predicted between two progress reports (each report may stop a cancelled job).
PROGRESS_BATCH = 64


def load_runner(artifact_format: str, model: bytes) -> Runner:
    runner = RUNNERS.get(artifact_format)
    if runner is None:
        raise ValueError(
            f"no runner for artifact format {artifact_format!r}; known: {sorted(RUNNERS)}"
        )
    return runner(model)


def evaluate(
    model: bytes,
    samples: Sequence[Sample],
    read_image: ReadImage,
    *,
    artifact_format: str = "pytorch",
    image_ids: Sequence[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Predict every sample with the model file ``model`` and score it (labels from the file).

    ``image_ids`` name the samples in the stored matches (their keys by default);
    ``on_progress(done, total)`` is called as the images are predicted and may raise to stop.
    """
    started = time.monotonic()
    runner = load_runner(artifact_format, model)
    cache = ImageCache(samples, read_image, runner.input_size)
    detections: list[Detections] = []
    for first in range(0, len(samples), PROGRESS_BATCH):
        batch = samples[first : first + PROGRESS_BATCH]
        images = [plain_example(cache[s.key], s, runner.input_size).image for s in batch]
        detections.extend(runner.predict(images))
        if on_progress is not None:
            on_progress(len(detections), len(samples))
    sizes = [cache.size_of(sample.key) for sample in samples]
    truths, found = to_metric_records(samples, detections, sizes)
    inferred = time.monotonic()
    coco, per_label, _ = score(truths, found, runner.labels)
    vertex = metrics.vertex_metrics(truths, found, label_names=runner.labels)
    table = matches.build(
        truths,
        found,
        label_names=runner.labels,
        image_ids=list(image_ids) if image_ids is not None else [s.key for s in samples],
        image_sizes=sizes,
        image_keys=[s.key for s in samples],
    )
    finished = time.monotonic()
    return Evaluation(
        vertex=vertex,
        coco=coco,
        coco_per_label=per_label,
        matches=table,
        image_count=len(samples),
        box_count=sum(len(sample.labels) for sample in samples),
        detection_count=sum(len(d.labels) for d in found),
        seconds=finished - started,
        inference_seconds=inferred - started,
        metric_seconds=finished - inferred,
    )

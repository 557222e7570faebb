"""Benchmark of evaluation: a model scored on a 1,000-image set, and the slider's latency.

    .venv/bin/python bench/evaluate.py --dataset ../shared/datasets/bccd --images 1000

The dataset folder's images (``labels.csv`` beside ``images/``) are repeated with flips
(none, horizontal, vertical, both) until there are ``--images`` of them, each a distinct
picture with its boxes flipped to match. A detector is trained on the dataset's TRAIN split
for ``--train-seconds`` (a real model makes as many detections as users see), or read from
``--model``. The set is then evaluated as the service evaluates it, timing inference
(decode, resize, predict) apart from the metrics (COCO, Vertex and the match table).

The slider is then asked for random (confidence, IoU) points through the HTTP API (a
scratch SQLite database and blob store, the evaluation registered as the service stores
it): p50 and p99 latency. The baseline, in the same run, answers the same points by
matching the detections above the cut afresh, as one would without stored matches.
Prints one JSON line.
"""

# ruff: noqa: E402 - the sys.path fix below must run before anything imports ``queue``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path and bench/queue.py would shadow the
# standard library's ``queue``; the repository root goes there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import csv
import hashlib
import io
import json
import random
import tempfile
import time
from collections import defaultdict
from typing import Any

import numpy as np
from PIL import Image

from app.detector import matches, metrics
from app.detector.evaluate import evaluate
from app.detector.trainer import train
from app.detector.types import Evaluation as Scored
from app.detector.types import Sample, TrainConfig

FLIPS = ("none", "horizontal", "vertical", "both")


def read_dataset(
    folder: Path,
) -> tuple[list[str], dict[str, list[tuple[str, list[float]]]], dict[str, str]]:
    """Labels, boxes per image path, and each image's split, from the AutoML CSV."""
    boxes: dict[str, list[tuple[str, list[float]]]] = defaultdict(list)
    splits: dict[str, str] = {}
    labels: set[str] = set()
    with open(folder / "labels.csv", newline="") as file:
        for row in csv.reader(file):
            path = str(folder / row[1])
            splits[path] = row[0]
            if len(row) > 2 and row[2]:
                labels.add(row[2])
                box = [float(row[3]), float(row[4]), float(row[7]), float(row[8])]
                boxes[path].append((row[2], box))
    return sorted(labels), boxes, splits


def sample_of(key: str, boxes: list[tuple[str, list[float]]], labels: list[str]) -> Sample:
    return Sample(
        key,
        np.array([b for _, b in boxes], np.float32).reshape(-1, 4),
        np.array([labels.index(name) for name, _ in boxes], np.int64),
    )


def flipped(box: list[float], flip: str) -> list[float]:
    x_min, y_min, x_max, y_max = box
    if flip in ("horizontal", "both"):
        x_min, x_max = 1 - x_max, 1 - x_min
    if flip in ("vertical", "both"):
        y_min, y_max = 1 - y_max, 1 - y_min
    return [x_min, y_min, x_max, y_max]


def build_set(
    paths: list[str], boxes: dict[str, list[tuple[str, list[float]]]], labels: list[str], count: int
) -> tuple[list[Sample], dict[str, bytes]]:
    """``count`` distinct images: the dataset's, then flipped copies of them."""
    if count > len(paths) * len(FLIPS):
        raise SystemExit(f"--images {count} is more than {len(FLIPS)} flips of {len(paths)}")
    files: dict[str, bytes] = {}
    samples = []
    for i in range(count):
        path, flip = paths[i % len(paths)], FLIPS[i // len(paths)]
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        if flip in ("horizontal", "both"):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if flip in ("vertical", "both"):
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
        key = f"{Path(path).stem}-{flip}.jpg"
        files[key] = out.getvalue()
        samples.append(
            sample_of(key, [(name, flipped(box, flip)) for name, box in boxes[path]], labels)
        )
    return samples, files


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def rematched_point(
    truths: list[metrics.ImageTruth],
    found: list[metrics.ImageDetections],
    labels: list[str],
    confidence: float,
    iou: float,
) -> matches.Counts:
    """The baseline: match the detections above the cut afresh and count."""
    kept = [
        metrics.ImageDetections(
            d.boxes[d.scores >= confidence],
            d.scores[d.scores >= confidence],
            d.labels[d.scores >= confidence],
        )
        for d in found
    ]
    table = matches.build(
        truths,
        kept,
        label_names=labels,
        image_ids=[str(i) for i in range(len(truths))],
        image_sizes=[(1, 1)] * len(truths),
    )
    return matches.counts(table, matches.outcome(table, confidence=confidence, iou=iou))


def slider_over_http(
    scored: Scored, labels: list[str], points: list[tuple[float, float]], model: bytes
) -> tuple[list[float], list[dict[str, Any]], dict[str, float]]:
    """Register the evaluation in a scratch service and time the slider over HTTP."""
    import warnings

    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

    from app.config import load_settings
    from app.db import migrate
    from app.evaluation import service as evaluation_service
    from app.main import create_app
    from app.registry import service as registry_service

    scratch = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    settings = load_settings(
        database_url=f"sqlite:///{scratch / 'db.sqlite'}", blob_url=f"file://{scratch / 'blobs'}"
    )
    migrate.upgrade(settings.database_url)
    app = create_app(settings)
    timings: list[float] = []
    answers = []
    with TestClient(app) as client:
        blobs = app.state.blobs
        model_id, evaluation_id = "bench-model", "bench-evaluation"
        weights = registry_service.StoredFile(
            key=registry_service.weights_key(model_id, 1),
            sha256=hashlib.sha256(model).hexdigest(),
            size_bytes=len(model),
        )
        blobs.put(weights.key, model)
        key = evaluation_service.store_scored(
            blobs, model_id=model_id, evaluation_id=evaluation_id, scored=scored
        )
        with app.state.session_factory.begin() as session:
            _, version = registry_service.create_model(
                session,
                model_id=model_id,
                display_name="bench",
                labels=labels,
                model_type="MOBILE_TF_LOW_LATENCY_1",
                input_size=320,
                training_job_id=None,
                weights=weights,
            )
            evaluation_service.add_evaluation(
                session,
                evaluation_id=evaluation_id,
                model_version=version,
                dataset_id="bench",
                split="TEST",
                artifact=evaluation_service.artifact_of(session, version, "pytorch"),
                metrics_blob_key=key,
                summary=evaluation_service.EvaluationSummary.of(scored),
            )
        path = f"/v1/models/{model_id}/evaluations/{evaluation_id}"
        started = time.perf_counter()
        first = client.get(f"{path}:threshold", params={"confidence": 0.5, "iou": 0.5})
        cold = time.perf_counter() - started
        assert first.status_code == 200, first.text
        for confidence, iou in points:
            started = time.perf_counter()
            response = client.get(
                f"{path}:threshold", params={"confidence": confidence, "iou": iou}
            )
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        # The same points in-process: the figures without HTTP and the database read.
        compute: list[float] = []
        with app.state.session_factory() as session:
            row = evaluation_service.get_evaluation(
                session, model_id=model_id, evaluation_id=evaluation_id
            )
            for confidence, iou in points:
                started = time.perf_counter()
                at = evaluation_service.point(
                    blobs, row, confidence=confidence, iou=iou, label=None
                )
                evaluation_service.threshold(row, at, target_precision=0.9)
                compute.append(time.perf_counter() - started)
        extra: dict[str, float] = {
            "slider_compute_p50_ms": round(percentile(compute, 50) * 1000, 2),
            "slider_compute_p99_ms": round(percentile(compute, 99) * 1000, 2),
        }
        for name, url, params in (
            ("image_results_s", f"{path}/imageResults", {"confidence": 0.5}),
            ("pr_plot_s", f"{path}/plots/pr.png", {}),
            ("confusion_plot_s", f"{path}/plots/confusion.png", {}),
        ):
            started = time.perf_counter()
            response = client.get(url, params=params)
            extra[name] = round(time.perf_counter() - started, 4)
            assert response.status_code == 200, response.text
        extra["slider_cold_s"] = round(cold, 4)
    return timings, answers, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=_HERE.parent.parent / "shared" / "datasets" / "bccd"
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--model", type=Path, help="a model file to evaluate instead of training")
    parser.add_argument("--points", type=int, default=200, help="slider points asked")
    parser.add_argument("--baseline-points", type=int, default=5)
    args = parser.parse_args()

    labels, boxes, splits = read_dataset(args.dataset)
    paths = sorted(boxes)
    if args.model:
        model = args.model.read_bytes()
    else:

        def read(key: str) -> bytes:
            return Path(key).read_bytes()

        def split(name: str) -> list[Sample]:
            return [sample_of(p, boxes[p], labels) for p in paths if splits[p] == name]

        config = TrainConfig(
            model_type="MOBILE_TF_LOW_LATENCY_1",
            labels=tuple(labels),
            budget_seconds=args.train_seconds,
        )
        model = train(config, split("TRAIN"), split("VALIDATION"), read).model
    samples, files = build_set(paths, boxes, labels, args.images)

    scored = evaluate(model, samples, files.__getitem__)
    truths, found = scored.matches.records()
    started = time.perf_counter()
    metrics.coco_stats(truths, found, num_labels=len(labels))
    coco_s = time.perf_counter() - started
    started = time.perf_counter()
    metrics.vertex_metrics(truths, found, label_names=labels)
    vertex_s = time.perf_counter() - started
    started = time.perf_counter()
    matches.build(
        truths,
        found,
        label_names=labels,
        image_ids=[str(i) for i in range(len(truths))],
        image_sizes=[tuple(s) for s in scored.matches.image_sizes],
    )
    table_s = time.perf_counter() - started

    rng = random.Random(0)
    points = [
        (round(rng.uniform(0.05, 0.95), 3), rng.choice(metrics.THRESHOLDS))
        for _ in range(args.points)
    ]
    timings, answers, extra = slider_over_http(scored, labels, points, model)

    # Baseline on the first points: match afresh; the answers must agree.
    baseline = []
    for (confidence, iou), answer in list(zip(points, answers, strict=True))[
        : args.baseline_points
    ]:
        started = time.perf_counter()
        counts = rematched_point(truths, found, labels, confidence, iou)
        baseline.append(time.perf_counter() - started)
        got = [entry["truePositiveCount"] for entry in answer["perLabel"]]
        if got != counts.tp.tolist():
            raise SystemExit(f"slider and recount disagree at {confidence, iou}: {got} {counts.tp}")

    p50, p99 = percentile(timings, 50), percentile(timings, 99)
    print(
        json.dumps(
            {
                "dataset": args.dataset.name,
                "images": scored.image_count,
                "truth_boxes": scored.box_count,
                "detections": scored.detection_count,
                "evaluate_s": round(scored.seconds, 2),
                "inference_s": round(scored.inference_seconds, 2),
                "metric_s": round(scored.metric_seconds, 2),
                "metric_share": round(scored.metric_seconds / scored.seconds, 3),
                "coco_s": round(coco_s, 3),
                "vertex_s": round(vertex_s, 3),
                "match_table_s": round(table_s, 3),
                "matches_blob_bytes": len(scored.matches.to_bytes()),
                "slider_points": len(timings),
                "slider_p50_ms": round(p50 * 1000, 2),
                "slider_p99_ms": round(p99 * 1000, 2),
                "baseline_rematch_p50_ms": round(percentile(baseline, 50) * 1000, 1),
                "speedup_vs_rematch": round(
                    percentile(baseline, 50) / (extra["slider_compute_p50_ms"] / 1000), 1
                ),
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()

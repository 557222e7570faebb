"""Our evaluation agrees with pycocotools on a trained model's detections over a real dataset.

A detector is trained for a minute on ../shared/datasets/fruit (three labels), then
evaluated on the TEST split as the service evaluates: AP at IoU 0.5 and 0.75 and
AP@[.5:.95], overall and per label, must equal COCOeval's within 1e-4, and Vertex's
per-label meanAveragePrecision at those IoUs must be COCO's AP50 and AP75.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from app.detector.evaluate import evaluate
from app.detector.metrics import THRESHOLDS
from app.detector.trainer import train
from app.detector.types import Sample, TrainConfig
from tests.datasets.conftest import SHARED_DATASETS
from tests.detector.test_metrics import pycoco_stats, to_coco

FRUIT = SHARED_DATASETS / "fruit"
TRAIN_SECONDS = 60.0
AP, AP50, AP75 = 0, 1, 2  # positions in COCOeval.stats


def read_split(folder: Path, split: str, labels: list[str]) -> list[Sample]:
    """The AutoML CSV's images of one split as samples keyed by file path."""
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    classes: dict[str, list[int]] = defaultdict(list)
    with open(folder / "labels.csv", newline="") as file:
        for row in csv.reader(file):
            if row[0] != split:
                continue
            path = str(folder / row[1])
            boxes[path].append([float(row[3]), float(row[4]), float(row[7]), float(row[8])])
            classes[path].append(labels.index(row[2]))
    return [
        Sample(path, np.array(boxes[path], np.float32), np.array(classes[path], np.int64))
        for path in sorted(boxes)
    ]


def read_file(key: str) -> bytes:
    return Path(key).read_bytes()


@pytest.fixture(scope="module")
def fruit_evaluation():
    if not (FRUIT / "labels.csv").exists():
        pytest.skip(f"{FRUIT} is absent: the shared datasets are not on this machine")
    with open(FRUIT / "labels.csv", newline="") as file:
        labels = sorted({row[2] for row in csv.reader(file)})
    config = TrainConfig(
        model_type="MOBILE_TF_LOW_LATENCY_1", labels=tuple(labels), budget_seconds=TRAIN_SECONDS
    )
    result = train(
        config,
        read_split(FRUIT, "TRAIN", labels),
        read_split(FRUIT, "VALIDATION", labels),
        read_file,
    )
    test = read_split(FRUIT, "TEST", labels)
    return labels, test, evaluate(result.model, test, read_file)


def test_ap_agrees_with_pycocotools_overall_and_per_label(fruit_evaluation) -> None:
    labels, test, scored = fruit_evaluation
    table = scored.matches
    assert len(table.det_score) > 10 * len(test), "a trained model detects plenty to score"
    assert scored.coco["AP50"] > 0.1, "a minute of training finds fruit: the data is real"
    # Detections back as COCO results, from the stored matches (boxes in pixels).
    truths, found = records_of(table, len(test))
    gt, dt = to_coco(truths, found, len(labels))
    theirs = pycoco_stats(gt, dt)
    ours = scored.coco
    for name, position in (("AP", AP), ("AP50", AP50), ("AP75", AP75)):
        assert ours[name] == pytest.approx(theirs[position], abs=1e-4), name
    vertex = {s["slice"]["value"]: s["metrics"] for s in scored.vertex["slices"]}
    at50, at75 = THRESHOLDS.index(0.5), THRESHOLDS.index(0.75)
    for k, label in enumerate(labels):
        theirs = pycoco_stats(gt, dt, cat_ids=[k + 1])
        mine = scored.coco_per_label[label]
        for name, position in (("AP", AP), ("AP50", AP50), ("AP75", AP75)):
            assert mine[name] == pytest.approx(theirs[position], abs=1e-4), (label, name)
        entries = vertex[label]["boundingBoxMetrics"]
        assert entries[at50]["meanAveragePrecision"] == pytest.approx(theirs[AP50], abs=1e-4)
        assert entries[at75]["meanAveragePrecision"] == pytest.approx(theirs[AP75], abs=1e-4)


def records_of(table, image_count: int):
    """Per-image truths and detections rebuilt from a match table."""
    from app.detector.metrics import ImageDetections, ImageTruth

    truths, found = [], []
    for image in range(image_count):
        t = table.truth_image == image
        d = table.det_image == image
        truths.append(ImageTruth(table.truth_box[t], table.truth_label[t]))
        found.append(ImageDetections(table.det_box[d], table.det_score[d], table.det_label[d]))
    return truths, found

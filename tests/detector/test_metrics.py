"""The detection metrics agree with pycocotools' COCOeval and have Vertex AI's shape."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from app.detector.metrics import (
    STAT_NAMES,
    THRESHOLDS,
    ImageDetections,
    ImageTruth,
    box_iou,
    coco_stats,
    vertex_metrics,
)


def truth(boxes: list[list[float]], labels: list[int]) -> ImageTruth:
    return ImageTruth(np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels, dtype=int))


def dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> ImageDetections:
    return ImageDetections(
        np.array(boxes, dtype=float).reshape(-1, 4),
        np.array(scores, dtype=float),
        np.array(labels, dtype=int),
    )


# --- pycocotools, built in memory -------------------------------------------------------


def to_coco(
    truths: list[ImageTruth], detections: list[ImageDetections], num_labels: int
) -> tuple[COCO, COCO]:
    """Ground truth and results as COCO objects; image i is id i+1, label k is category k+1."""
    images = [{"id": i + 1, "width": 1000, "height": 1000} for i in range(len(truths))]
    categories = [{"id": k + 1, "name": str(k)} for k in range(num_labels)]
    annotations = []
    for i, t in enumerate(truths):
        for (x1, y1, x2, y2), label in zip(t.boxes.tolist(), t.labels.tolist(), strict=True):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    results = [
        {
            "image_id": i + 1,
            "category_id": label + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        for i, d in enumerate(detections)
        for (x1, y1, x2, y2), score, label in zip(
            d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True
        )
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "categories": categories, "annotations": annotations}
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list (it reads results[0])
            dt = COCO()
            dt.dataset = {"images": images, "categories": categories, "annotations": []}
            dt.createIndex()
    return gt, dt


def pycoco_stats(gt: COCO, dt: COCO, cat_ids: list[int] | None = None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, dt, iouType="bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=float)


# --- random cases -----------------------------------------------------------------------

SCALES = ((1.0, 20.0), (28.0, 40.0), (32.0, 96.0), (90.0, 300.0))  # tiny .. large, and edges


def random_box(rng: np.random.Generator, integer: bool) -> list[float]:
    low, high = SCALES[rng.integers(len(SCALES))]
    w, h = rng.uniform(low, high, size=2)
    x, y = rng.uniform(0, 600, size=2)
    box = [x, y, x + w, y + h]
    return [float(round(v)) for v in box] if integer else box


def jitter(rng: np.random.Generator, box: list[float], integer: bool) -> list[float]:
    size = max(box[2] - box[0], box[3] - box[1])
    moved = [v + rng.normal(0, 0.08 * size) for v in box]
    moved[2], moved[3] = max(moved[2], moved[0] + 0.5), max(moved[3], moved[1] + 0.5)
    return [float(round(v)) for v in moved] if integer else moved


def random_case(seed: int) -> tuple[list[ImageTruth], list[ImageDetections], int]:
    """A seeded dataset; the seed also picks which awkward situation it stresses."""
    rng = np.random.default_rng(seed)
    num_labels = int(rng.integers(8, 15)) if seed % 7 == 0 else int(rng.integers(1, 4))
    integer = seed % 2 == 0  # integer boxes make exact IoU ties and area-boundary hits
    tied_scores = seed % 3 == 0
    truths, detections = [], []
    for image in range(int(rng.integers(1, 6))):
        n_gt = 0 if rng.random() < 0.2 else int(rng.integers(1, 6))
        gt_boxes = [random_box(rng, integer) for _ in range(n_gt)]
        if integer and n_gt and rng.random() < 0.3:
            gt_boxes[0] = [10.0, 10.0, 42.0, 42.0]  # exactly 32*32: both small and medium
        many = seed % 25 == 1 and image == 0
        gt_labels = [0 if many else int(rng.integers(num_labels)) for _ in range(n_gt)]
        boxes, labels = [], []
        if n_gt and rng.random() < 0.4:
            # A neighbour of the first box: detections between them have equal IoU with both
            # (tie-breaking) or straddle an area boundary (ignored versus counted ground truth).
            x1, y1, x2, y2 = gt_boxes[0]
            if rng.random() < 0.5:
                shift = float(rng.integers(1, 4))
                gt_boxes.append([x1 + 2 * shift, y1, x2 + 2 * shift, y2])
                boxes.append([x1 + shift, y1, x2 + shift, y2])
            else:
                grow = float(rng.integers(1, 6))
                gt_boxes.append([x1, y1, x2 + grow, y2 + grow])
                boxes.append([x1, y1, x2 + grow / 2, y2 + grow / 2])
            gt_labels.append(gt_labels[0])
            labels.append(gt_labels[0])
            n_gt += 1
        if seed % 10 == 0 or rng.random() < 0.15:
            boxes, labels = [], []  # an image without detections
        else:
            for box, label in zip(gt_boxes, gt_labels, strict=True):
                for _ in range(int(rng.integers(0, 3))):  # missed, found, or found twice
                    wrong = rng.random() < 0.15
                    boxes.append(jitter(rng, box, integer))
                    labels.append(int(rng.integers(num_labels)) if wrong else label)
                if rng.random() < 0.2 and boxes:  # exact duplicate of the last box
                    boxes.append(list(boxes[-1]))
                    labels.append(labels[-1])
            for _ in range(int(rng.integers(105, 130)) if many else int(rng.integers(0, 4))):
                if many and n_gt and rng.random() < 0.5:
                    # Hits past the 100th detection must be dropped, not counted.
                    j = int(rng.integers(n_gt))
                    boxes.append(jitter(rng, gt_boxes[j], integer))
                    labels.append(gt_labels[j])
                else:
                    boxes.append(random_box(rng, integer))
                    labels.append(0 if many else int(rng.integers(num_labels)))
        scores = rng.random(len(boxes))
        if tied_scores:
            scores = np.round(scores * 4) / 4
        truths.append(truth(gt_boxes, gt_labels))
        detections.append(dets(boxes, scores.tolist(), labels))
    return truths, detections, num_labels


CASES = range(240)


def situations(
    truths: list[ImageTruth], detections: list[ImageDetections], k: int
) -> dict[str, bool]:
    """Which awkward situations one random case contains."""
    gt = np.concatenate([t.boxes for t in truths])
    areas = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    checks = {
        "image without ground truth": any(len(t.labels) == 0 for t in truths),
        "image without detections": any(len(d.labels) == 0 for d in detections),
        "no detections at all": all(len(d.labels) == 0 for d in detections),
        "over 100 of a label on one image": any(
            int(np.max(np.bincount(d.labels), initial=0)) > 100 for d in detections
        ),
        "many labels": k >= 8,
        "tied scores": any(len(np.unique(d.scores)) < len(d.scores) for d in detections),
        "duplicate boxes": any(len(np.unique(d.boxes, axis=0)) < len(d.boxes) for d in detections),
        "small": bool(np.any(areas < 32**2)),
        "exactly 32^2": bool(np.any(areas == 32**2)),
        "medium": bool(np.any((areas > 32**2) & (areas < 96**2))),
        "large": bool(np.any(areas > 96**2)),
    }
    return checks


def test_random_cases_cover_the_awkward_situations() -> None:
    found = [situations(*random_case(seed)) for seed in CASES]
    missing = [name for name in found[0] if not any(case[name] for case in found)]
    assert missing == []


@pytest.mark.parametrize("seed", CASES)
def test_coco_stats_match_pycocotools(seed: int) -> None:
    truths, detections, num_labels = random_case(seed)
    ours = coco_stats(truths, detections, num_labels=num_labels)
    gt, dt = to_coco(truths, detections, num_labels)
    np.testing.assert_allclose(ours.overall, pycoco_stats(gt, dt), atol=1e-4, rtol=0)
    for k in range(num_labels):
        expected = pycoco_stats(gt, dt, cat_ids=[k + 1])
        np.testing.assert_allclose(ours.per_label[k], expected, atol=1e-4, rtol=0, err_msg=f"{k}")


# --- hand-made cases ----------------------------------------------------------------------


def stats_of(truths: list[ImageTruth], detections: list[ImageDetections], k: int = 1) -> dict:
    return coco_stats(truths, detections, num_labels=k).as_dict()


def test_one_perfect_detection_scores_one() -> None:
    s = stats_of([truth([[0, 0, 50, 50]], [0])], [dets([[0, 0, 50, 50]], [0.9], [0])])
    assert s["AP"] == pytest.approx(1.0)
    for name in ("AP50", "AP75", "AR1", "AR100"):
        assert s[name] == pytest.approx(1.0)
    assert s["APmedium"] == pytest.approx(1.0)
    assert s["APsmall"] == s["APlarge"] == -1.0  # no ground truth in those ranges


def test_false_positive_above_the_true_positive_halves_ap() -> None:
    t = [truth([[0, 0, 50, 50]], [0])]
    fp_first = [dets([[200, 200, 250, 250], [0, 0, 50, 50]], [0.9, 0.8], [0, 0])]
    tp_first = [dets([[200, 200, 250, 250], [0, 0, 50, 50]], [0.8, 0.9], [0, 0])]
    assert stats_of(t, fp_first)["AP"] == pytest.approx(0.5)
    assert stats_of(t, tp_first)["AP"] == pytest.approx(1.0)
    assert stats_of(t, fp_first)["AR1"] == 0.0  # the single best detection is the wrong one


def test_iou_exactly_at_a_threshold_matches() -> None:
    # IoU is exactly 0.5: a match at 0.50, a miss at 0.55 and above.
    s = stats_of([truth([[0, 0, 10, 10]], [0])], [dets([[0, 0, 10, 5]], [0.9], [0])])
    assert s["AP50"] == pytest.approx(1.0)
    assert s["AP75"] == 0.0
    assert s["AP"] == pytest.approx(0.1)


def test_half_recall_samples_51_of_101_points() -> None:
    t = [truth([[0, 0, 50, 50], [100, 100, 150, 150]], [0, 0])]
    s = stats_of(t, [dets([[0, 0, 50, 50]], [0.9], [0])])
    assert s["AP"] == pytest.approx(51 / 101)
    assert s["AR100"] == pytest.approx(0.5)


def test_a_duplicate_detection_is_a_false_positive() -> None:
    t = [truth([[0, 0, 50, 50]], [0])]
    d = [dets([[0, 0, 50, 50], [0, 0, 50, 50]], [0.9, 0.8], [0, 0])]
    assert stats_of(t, d)["AP"] == pytest.approx(1.0)  # the FP comes after full recall
    v = vertex_metrics(t, d, label_names=["a"])["metrics"]["boundingBoxMetrics"][0]
    at_05 = v["confidenceMetrics"][0]
    assert (at_05["precision"], at_05["recall"]) == (0.5, 1.0)


def test_only_the_best_max_dets_detections_per_image_count() -> None:
    t = [truth([[0, 0, 50, 50]], [0])]
    boxes = [[300.0 + i, 300, 340 + i, 340] for i in range(100)] + [[0.0, 0, 50, 50]]
    d = [dets(boxes, [0.9] * 100 + [0.1], [0] * 101)]
    assert stats_of(t, d)["AR100"] == 0.0  # the hit is the 101st
    assert coco_stats(t, d, num_labels=1, max_dets=101).as_dict()["AR100"] == pytest.approx(1.0)


def test_label_without_ground_truth_is_undefined_and_left_out() -> None:
    t = [truth([[0, 0, 50, 50]], [0])]
    d = [dets([[0, 0, 50, 50], [60, 60, 90, 90]], [0.9, 0.95], [0, 1])]
    result = coco_stats(t, d, num_labels=2)
    assert np.all(result.per_label[1] == -1.0)
    assert result.overall[0] == pytest.approx(1.0)  # label 1's false positive counts nowhere


def test_wrong_label_does_not_match() -> None:
    s = stats_of([truth([[0, 0, 50, 50]], [0])], [dets([[0, 0, 50, 50]], [0.9], [1])], k=2)
    assert s["AP"] == 0.0


def test_box_iou_has_no_plus_one() -> None:
    iou = box_iou(np.array([[0.0, 0, 10, 10]]), np.array([[5.0, 0, 15, 10], [10.0, 0, 20, 10]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0]])


def test_inconsistent_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        coco_stats([truth([[0, 0, 1, 1]], [3])], [dets([], [], [])], num_labels=2)
    with pytest.raises(ValueError):
        coco_stats([truth([], [])], [], num_labels=1)


# --- Vertex shape and the confidence cuts -------------------------------------------------


def brute_force_counts(
    truths: list[ImageTruth], detections: list[ImageDetections], label: int, iou: float, cut: float
) -> tuple[int, int, int]:
    """TP, FP, #GT of one label, matching afresh only the detections scored >= cut."""
    tp = fp = num_gt = 0
    for t, d in zip(truths, detections, strict=True):
        gt = t.boxes[t.labels == label]
        num_gt += len(gt)
        keep = (d.labels == label) & (d.scores >= cut)
        boxes, scores = d.boxes[keep], d.scores[keep]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:100]
        taken: set[int] = set()
        for i in order:
            best, best_j = iou, -1
            for j in range(len(gt)):
                value = box_iou(boxes[i : i + 1], gt[j : j + 1])[0, 0]
                if j not in taken and value >= best:
                    best, best_j = value, j
            if best_j >= 0:
                taken.add(best_j)
                tp += 1
            else:
                fp += 1
    return tp, fp, num_gt


@pytest.mark.parametrize("seed", [3, 4, 11, 14, 21])
def test_confidence_cuts_equal_matching_afresh(seed: int) -> None:
    truths, detections, num_labels = random_case(seed)
    names = [f"label{k}" for k in range(num_labels)]
    result = vertex_metrics(truths, detections, label_names=names)
    slices = {s["slice"]["value"]: s["metrics"] for s in result["slices"]}
    for t_index in (0, 9, 14, 19):
        iou = THRESHOLDS[t_index]
        for c_index, cut in enumerate(THRESHOLDS):
            totals = np.zeros(3)
            for k in range(num_labels):
                tp, fp, num_gt = brute_force_counts(truths, detections, k, iou, cut)
                totals += (tp, fp, num_gt)
                if num_gt == 0:
                    assert names[k] not in slices
                    continue
                got = slices[names[k]]["boundingBoxMetrics"][t_index]["confidenceMetrics"][c_index]
                assert got["recall"] == pytest.approx(tp / num_gt)
                assert got["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
            tp, fp, num_gt = totals
            got = result["metrics"]["boundingBoxMetrics"][t_index]["confidenceMetrics"][c_index]
            assert got["recall"] == pytest.approx(tp / num_gt if num_gt else 0.0)
            assert got["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)


def check_shape(metrics: dict[str, Any]) -> None:
    assert set(metrics) == {
        "boundingBoxMeanAveragePrecision",
        "evaluatedBoundingBoxCount",
        "boundingBoxMetrics",
    }
    entries = metrics["boundingBoxMetrics"]
    assert [e["iouThreshold"] for e in entries] == list(THRESHOLDS)
    aps = [e["meanAveragePrecision"] for e in entries]
    assert metrics["boundingBoxMeanAveragePrecision"] == pytest.approx(np.mean(aps))
    for entry in entries:
        assert set(entry) == {"iouThreshold", "meanAveragePrecision", "confidenceMetrics"}
        cuts = entry["confidenceMetrics"]
        assert [c["confidenceThreshold"] for c in cuts] == list(THRESHOLDS)
        for c in cuts:
            assert set(c) == {"confidenceThreshold", "recall", "precision", "f1Score"}
            p, r = c["precision"], c["recall"]
            assert c["f1Score"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
            assert 0.0 <= p <= 1.0 and 0.0 <= r <= 1.0
        recalls = [c["recall"] for c in cuts]
        assert recalls == sorted(recalls, reverse=True)  # a higher cut never finds more


def test_thresholds_are_vertex_thresholds_without_float_drift() -> None:
    percents = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95]
    assert tuple(v / 100 for v in [*percents, 96, 97, 98, 99]) == THRESHOLDS


def test_vertex_metrics_shape_and_agreement_with_coco() -> None:
    truths, detections, num_labels = random_case(12)
    names = [f"label{k}" for k in range(num_labels)]
    result = vertex_metrics(truths, detections, label_names=names)
    assert set(result) == {"metrics", "slices"}
    check_shape(result["metrics"])
    coco = coco_stats(truths, detections, num_labels=num_labels)
    at_50 = result["metrics"]["boundingBoxMetrics"][THRESHOLDS.index(0.5)]
    assert at_50["meanAveragePrecision"] == pytest.approx(coco.overall[STAT_NAMES.index("AP50")])
    gt_counts = np.bincount(np.concatenate([t.labels for t in truths]), minlength=num_labels)
    assert result["metrics"]["evaluatedBoundingBoxCount"] == int(gt_counts.sum())
    assert [s["slice"]["value"] for s in result["slices"]] == [
        names[k] for k in range(num_labels) if gt_counts[k]
    ]
    for s in result["slices"]:
        assert s["slice"]["dimension"] == "annotationSpec"
        check_shape(s["metrics"])
        k = names.index(s["slice"]["value"])
        assert s["metrics"]["evaluatedBoundingBoxCount"] == gt_counts[k]
        at_75 = s["metrics"]["boundingBoxMetrics"][THRESHOLDS.index(0.75)]
        assert at_75["meanAveragePrecision"] == pytest.approx(coco.per_label[k][2])


def test_vertex_metrics_without_detections() -> None:
    t = [truth([[0, 0, 50, 50]], [0])]
    metrics = vertex_metrics(t, [dets([], [], [])], label_names=["a"])["metrics"]
    check_shape(metrics)
    assert metrics["boundingBoxMeanAveragePrecision"] == 0.0
    first = metrics["boundingBoxMetrics"][0]["confidenceMetrics"][0]
    assert first == {"confidenceThreshold": 0.05, "recall": 0.0, "precision": 1.0, "f1Score": 0.0}


def test_metrics_import_no_web_database_or_torch() -> None:
    code = (
        "import sys, app.detector.metrics; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'sqlalchemy', 'pydantic', 'torch', 'pycocotools'}), "
        "sorted(m for m in sys.modules if m.startswith('app.') and "
        "not m.startswith('app.detector')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"

"""Object-detection metrics: COCO's bbox evaluation, exactly, and Vertex AI's evaluation shape.

Everything here is pure NumPy over per-image records whose boxes are
``x_min, y_min, x_max, y_max`` in pixels and whose labels are ``0 .. num_labels - 1``.

COCO part (:func:`coco_stats`) reproduces pycocotools' ``COCOeval`` for ``iouType="bbox"``
on crowd-free data: the 12 numbers of ``COCOeval.stats``, overall and per label, with
``-1.0`` wherever COCOeval reports a figure as undefined (no ground truth in the slice).

Vertex part (:func:`vertex_metrics`) follows Vertex AI's image object-detection evaluation
(``boundingBoxMeanAveragePrecision``, ``evaluatedBoundingBoxCount``, ``boundingBoxMetrics``)
at :data:`THRESHOLDS`, overall and as per-label slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Both the IoU and the confidence thresholds of Vertex's evaluation. Rounded so that 0.15
# is 0.15 and not 0.15000000000000002 (which would move detections scored exactly 0.15).
THRESHOLDS: tuple[float, ...] = tuple(
    [round(0.05 * i, 2) for i in range(1, 20)] + [0.96, 0.97, 0.98, 0.99]
)

# COCOeval's own grids, built the same way (linspace, not arange): comparisons against
# them must fall on the same side as pycocotools' for the numbers to agree exactly.
COCO_IOU_THRESHOLDS: FloatArray = np.linspace(0.5, 0.95, 10, endpoint=True)
RECALL_POINTS: FloatArray = np.linspace(0.0, 1.0, 101, endpoint=True)

# Ground-truth area ranges in square pixels, bounds inclusive on both ends as in COCOeval.
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}

# The meaning of each entry of COCOeval.stats, in order.
STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APsmall",
    "APmedium",
    "APlarge",
    "AR1",
    "AR10",
    "AR100",
    "ARsmall",
    "ARmedium",
    "ARlarge",
)

# COCOeval's guard against 1.0 thresholds, and its epsilon in the precision denominator.
_MAX_IOU_THRESHOLD = 1 - 1e-10
_EPS = float(np.spacing(1))


@dataclass(frozen=True)
class ImageTruth:
    """Ground-truth boxes of one image: ``boxes`` (N, 4) pixels, ``labels`` (N,) ints."""

    boxes: FloatArray
    labels: NDArray[np.int64]


@dataclass(frozen=True)
class ImageDetections:
    """Predicted boxes of one image: ``boxes`` (M, 4) pixels, ``scores`` and ``labels`` (M,)."""

    boxes: FloatArray
    scores: FloatArray
    labels: NDArray[np.int64]


@dataclass(frozen=True)
class CocoStats:
    """COCOeval.stats overall (12,) and per label (num_labels, 12); -1 where undefined."""

    overall: FloatArray
    per_label: FloatArray

    def as_dict(self) -> dict[str, float]:
        """The overall figures keyed by :data:`STAT_NAMES`."""
        return {name: float(value) for name, value in zip(STAT_NAMES, self.overall, strict=True)}


def box_iou(detections: FloatArray, truths: FloatArray) -> FloatArray:
    """IoU matrix (D, G) between corner-format boxes, computed as pycocotools' ``bbIou`` does.

    No +1 on widths (continuous coordinates). Right and bottom edges are rebuilt as
    ``x_min + width`` because that is the arithmetic pycocotools performs on ``[x, y, w, h]``
    boxes; it keeps float results identical to the last bit, so matches at an IoU that equals
    a threshold land on the same side.
    """
    d = np.asarray(detections, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(truths, dtype=np.float64).reshape(-1, 4)
    dw, dh = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    w = np.minimum((d[:, 0] + dw)[:, None], (g[:, 0] + gw)[None, :]) - np.maximum(
        d[:, 0][:, None], g[:, 0][None, :]
    )
    h = np.minimum((d[:, 1] + dh)[:, None], (g[:, 1] + gh)[None, :]) - np.maximum(
        d[:, 1][:, None], g[:, 1][None, :]
    )
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    union = (dw * dh)[:, None] + (gw * gh)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _areas(boxes: FloatArray) -> FloatArray:
    """Box areas ``w * h`` in square pixels (COCO's ``area`` for ground truth and results)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def match_image(
    ious: FloatArray, gt_ignore: BoolArray, iou_thresholds: FloatArray
) -> tuple[BoolArray, BoolArray, NDArray[np.int64]]:
    """Greedy matching of score-sorted detections to ground truth, as COCOeval.evaluateImg.

    ``ious`` is (D, G) with detections already in descending score order, ``gt_ignore`` is
    (A, G) per area range. Returns ``matched`` and ``matched_to_ignored``, both (A, T, D),
    and the column of the ground truth each detection took (A, T, D), -1 where none.

    Each detection takes the unmatched ground truth with the highest IoU at or above the
    threshold, preferring a non-ignored one; among equal IoUs the last one in input order wins
    (COCOeval's ``ious < iou: continue`` keeps replacing on ties). All area ranges and IoU
    thresholds are matched at once, one detection at a time, since greedy matching is sequential.
    """
    num_areas, num_gt = gt_ignore.shape
    num_dt = ious.shape[0]
    thresholds = np.minimum(iou_thresholds, _MAX_IOU_THRESHOLD)[None, :, None]
    matched = np.zeros((num_areas, len(iou_thresholds), num_dt), dtype=bool)
    matched_ignored = np.zeros_like(matched)
    taken_by = np.full(matched.shape, -1, dtype=np.int64)
    if num_gt == 0 or num_dt == 0:
        return matched, matched_ignored, taken_by
    gt_taken = np.zeros((num_areas, len(iou_thresholds), num_gt), dtype=bool)
    ignore = gt_ignore[:, None, :]
    reversed_columns = np.arange(num_gt - 1, -1, -1)
    for d in range(num_dt):
        row = ious[d][None, None, :]
        eligible = ~gt_taken & (row >= thresholds)
        if not eligible.any():
            continue
        regular = eligible & ~ignore
        candidates = np.where(regular.any(axis=-1, keepdims=True), regular, eligible)
        values = np.where(candidates, row, -1.0)
        best = candidates & (values == values.max(axis=-1, keepdims=True))
        chosen = reversed_columns[np.argmax(best[..., ::-1], axis=-1)]
        hit = candidates.any(axis=-1)
        area_idx, thr_idx = np.nonzero(hit)
        gt_idx = chosen[area_idx, thr_idx]
        gt_taken[area_idx, thr_idx, gt_idx] = True
        matched[area_idx, thr_idx, d] = True
        matched_ignored[area_idx, thr_idx, d] = gt_ignore[area_idx, gt_idx]
        taken_by[area_idx, thr_idx, d] = gt_idx
    return matched, matched_ignored, taken_by


@dataclass(frozen=True)
class _LabelImage:
    """Evaluation of one label on one image: sorted scores, match flags, ignore flags."""

    scores: FloatArray  # (D,) descending
    matched: BoolArray  # (A, T, D)
    dt_ignore: BoolArray  # (A, T, D)
    gt_ignore: BoolArray  # (A, G)


def check_records(
    truths: Sequence[ImageTruth], detections: Sequence[ImageDetections], num_labels: int
) -> None:
    """Reject inputs that would otherwise give silently wrong numbers."""
    if len(truths) != len(detections):
        raise ValueError(f"{len(truths)} ground-truth records but {len(detections)} detections")
    for i, (truth, dets) in enumerate(zip(truths, detections, strict=True)):
        n, m = len(truth.labels), len(dets.labels)
        if np.shape(truth.boxes) not in ((n, 4), (0,)) or len(dets.scores) != m:
            raise ValueError(f"image {i}: inconsistent array shapes")
        if np.shape(dets.boxes) not in ((m, 4), (0,)):
            raise ValueError(f"image {i}: inconsistent array shapes")
        for labels in (truth.labels, dets.labels):
            if len(labels) and (np.min(labels) < 0 or np.max(labels) >= num_labels):
                raise ValueError(f"image {i}: label outside 0..{num_labels - 1}")


def _evaluate_images(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    *,
    num_labels: int,
    iou_thresholds: FloatArray,
    area_ranges: Sequence[tuple[float, float]],
    max_dets: int,
) -> list[list[_LabelImage]]:
    """Per label, the per-image evaluations in image order (COCOeval.evaluate)."""
    check_records(truths, detections, num_labels)
    lows = np.array([low for low, _ in area_ranges])[:, None]
    highs = np.array([high for _, high in area_ranges])[:, None]
    per_label: list[list[_LabelImage]] = [[] for _ in range(num_labels)]
    for truth, dets in zip(truths, detections, strict=True):
        gt_boxes = np.asarray(truth.boxes, dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(truth.labels).reshape(-1)
        dt_boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4)
        dt_scores = np.asarray(dets.scores, dtype=np.float64).reshape(-1)
        dt_labels = np.asarray(dets.labels).reshape(-1)
        for label in np.union1d(gt_labels, dt_labels).astype(int):
            gt = gt_boxes[gt_labels == label]
            dt_idx = np.flatnonzero(dt_labels == label)
            # Stable, so tied scores keep input order as COCOeval's mergesort does.
            order = dt_idx[np.argsort(-dt_scores[dt_idx], kind="mergesort")][:max_dets]
            dt = dt_boxes[order]
            gt_area, dt_area = _areas(gt)[None, :], _areas(dt)[None, :]
            gt_ignore = (gt_area < lows) | (gt_area > highs)
            matched, matched_ignored, _ = match_image(box_iou(dt, gt), gt_ignore, iou_thresholds)
            # Unmatched detections outside the area range do not count as false positives.
            dt_out = ((dt_area < lows) | (dt_area > highs))[:, None, :]
            per_label[label].append(
                _LabelImage(
                    scores=dt_scores[order],
                    matched=matched,
                    dt_ignore=matched_ignored | (~matched & dt_out),
                    gt_ignore=gt_ignore,
                )
            )
    return per_label


@dataclass(frozen=True)
class _Curve:
    """Cumulative counts of one label over detections in descending score order."""

    scores: FloatArray  # (N,)
    tp: FloatArray  # (T, N) cumulative true positives
    fp: FloatArray  # (T, N) cumulative false positives
    num_gt: int  # non-ignored ground truth


def _curve(images: list[_LabelImage], area: int, max_det: int, num_thresholds: int) -> _Curve:
    """Concatenate one label's images and sort by score, as COCOeval.accumulate."""
    if not images:
        empty = np.zeros((num_thresholds, 0))
        return _Curve(np.zeros(0), empty, empty, 0)
    scores = np.concatenate([e.scores[:max_det] for e in images])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e.matched[area, :, :max_det] for e in images], axis=1)[:, order]
    ignored = np.concatenate([e.dt_ignore[area, :, :max_det] for e in images], axis=1)[:, order]
    num_gt = int(sum(np.count_nonzero(~e.gt_ignore[area]) for e in images))
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    return _Curve(scores[order], tp, fp, num_gt)


def _interpolated_precision(curve: _Curve) -> tuple[FloatArray, FloatArray]:
    """Precision at the 101 recall points (T, 101) and final recall (T,), as COCOeval does."""
    num_thresholds, num_dets = curve.tp.shape
    if num_dets == 0:
        return np.zeros((num_thresholds, len(RECALL_POINTS))), np.zeros(num_thresholds)
    recall = curve.tp / curve.num_gt
    precision = curve.tp / (curve.fp + curve.tp + _EPS)
    # Monotone envelope from the right: the best precision at this recall or beyond.
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((num_thresholds, len(RECALL_POINTS)))
    for t in range(num_thresholds):
        idx = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        inside = idx < num_dets
        sampled[t, inside] = precision[t, idx[inside]]
    return sampled, recall[:, -1]


def _mean_defined(values: FloatArray) -> float:
    """Mean over entries > -1, or -1 when there are none (COCOeval.summarize)."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _summarize(precision: FloatArray, recall: FloatArray) -> FloatArray:
    """The 12 COCOeval.stats from precision (T, R, K, A, M) and recall (T, K, A, M)."""
    at50 = np.where(COCO_IOU_THRESHOLDS == 0.5)[0]
    at75 = np.where(COCO_IOU_THRESHOLDS == 0.75)[0]
    all_, small, medium, large = 0, 1, 2, 3
    last = 2  # index of max_dets in (1, 10, max_dets)
    return np.array(
        [
            _mean_defined(precision[:, :, :, all_, last]),
            _mean_defined(precision[at50][:, :, :, all_, last]),
            _mean_defined(precision[at75][:, :, :, all_, last]),
            _mean_defined(precision[:, :, :, small, last]),
            _mean_defined(precision[:, :, :, medium, last]),
            _mean_defined(precision[:, :, :, large, last]),
            _mean_defined(recall[:, :, all_, 0]),
            _mean_defined(recall[:, :, all_, 1]),
            _mean_defined(recall[:, :, all_, last]),
            _mean_defined(recall[:, :, small, last]),
            _mean_defined(recall[:, :, medium, last]),
            _mean_defined(recall[:, :, large, last]),
        ]
    )


def coco_stats(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    *,
    num_labels: int,
    max_dets: int = 100,
) -> CocoStats:
    """COCOeval (bbox, crowd-free) stats overall and per label; -1 where COCO says undefined.

    Agrees with pycocotools when image ids follow the order of ``truths``, results are listed
    in input order and ground-truth ``area`` is ``w * h``. ``max_dets`` replaces COCO's 100
    (detections kept per image and label; AR1 and AR10 stay at 1 and 10). A label without
    ground truth gets -1 everywhere and is left out of the overall means.
    """
    if max_dets < 10:
        raise ValueError("max_dets must be at least 10 (AR1 and AR10 are part of the stats)")
    max_dets_list = (1, 10, max_dets)
    per_label = _evaluate_images(
        truths,
        detections,
        num_labels=num_labels,
        iou_thresholds=COCO_IOU_THRESHOLDS,
        area_ranges=list(AREA_RANGES.values()),
        max_dets=max_dets,
    )
    num_t, num_a, num_m = len(COCO_IOU_THRESHOLDS), len(AREA_RANGES), len(max_dets_list)
    precision = -np.ones((num_t, len(RECALL_POINTS), num_labels, num_a, num_m))
    recall = -np.ones((num_t, num_labels, num_a, num_m))
    for k, images in enumerate(per_label):
        for a in range(num_a):
            for m, max_det in enumerate(max_dets_list):
                curve = _curve(images, a, max_det, num_t)
                if curve.num_gt == 0:
                    continue
                precision[:, :, k, a, m], recall[:, k, a, m] = _interpolated_precision(curve)
    overall = _summarize(precision, recall)
    by_label = np.stack(
        [_summarize(precision[:, :, k : k + 1], recall[:, k : k + 1]) for k in range(num_labels)]
    ).reshape(num_labels, len(STAT_NAMES))
    return CocoStats(overall=overall, per_label=by_label)


def _confidence_counts(curve: _Curve) -> tuple[FloatArray, FloatArray]:
    """True and false positives (T, C) among detections scored >= each confidence threshold.

    Matching runs in score order, so the greedy matching of the detections above a cut is the
    prefix of the full matching up to that cut; a search on the sorted scores reads it off.
    """
    cuts = np.array(THRESHOLDS)
    # Ascending negated scores: "score >= c" is "-score <= -c", i.e. side="right".
    kept = np.searchsorted(-curve.scores, -cuts, side="right")
    zeros = np.zeros((curve.tp.shape[0], 1))
    tp = np.concatenate([zeros, curve.tp], axis=1)[:, kept]
    fp = np.concatenate([zeros, curve.fp], axis=1)[:, kept]
    return tp, fp


def _vertex_shape(
    average_precision: FloatArray, tp: FloatArray, fp: FloatArray, num_gt: int
) -> dict[str, Any]:
    """Vertex's evaluation dict from AP per IoU (T,) and TP/FP per IoU and confidence (T, C).

    Precision is 1.0 when no detection passes the cut (nothing claimed, nothing wrong);
    recall is 0.0 when there is no ground truth; F1 is 0.0 when both are 0. An AP of -1
    (no ground truth) is COCO's "undefined" and stays out of the mean.
    """
    detected = tp + fp
    precision = np.divide(tp, detected, out=np.ones_like(tp), where=detected > 0)
    recall = tp / num_gt if num_gt else np.zeros_like(tp)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    entries = [
        {
            "iouThreshold": iou,
            "meanAveragePrecision": float(average_precision[t]),
            "confidenceMetrics": [
                {
                    "confidenceThreshold": confidence,
                    "recall": float(recall[t, c]),
                    "precision": float(precision[t, c]),
                    "f1Score": float(f1[t, c]),
                }
                for c, confidence in enumerate(THRESHOLDS)
            ],
        }
        for t, iou in enumerate(THRESHOLDS)
    ]
    return {
        "boundingBoxMeanAveragePrecision": _mean_defined(average_precision),
        "evaluatedBoundingBoxCount": num_gt,
        "boundingBoxMetrics": entries,
    }


def vertex_metrics(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    *,
    label_names: Sequence[str],
    max_dets: int = 100,
) -> dict[str, Any]:
    """Vertex AI's bounding-box evaluation, overall and sliced per label.

    Returns ``{"metrics": {...}, "slices": [{"slice": {"dimension": "annotationSpec",
    "value": name}, "metrics": {...}}]}``; each ``metrics`` has Vertex's shape with an entry
    for every IoU threshold in :data:`THRESHOLDS` and, in each, confidence metrics for every
    confidence threshold in :data:`THRESHOLDS`.

    ``meanAveragePrecision`` at an IoU threshold is COCO's 101-point AP (all areas, at most
    ``max_dets`` detections per image and label) averaged over labels with ground truth, so at
    IoU 0.5 it equals COCO's AP50. Overall precision and recall at a confidence cut pool the
    boxes of all labels (micro average). ``evaluatedBoundingBoxCount`` counts ground-truth
    boxes, as Vertex does. Only labels with ground truth get a slice.
    """
    num_labels = len(label_names)
    iou_thresholds = np.array(THRESHOLDS)
    per_label = _evaluate_images(
        truths,
        detections,
        num_labels=num_labels,
        iou_thresholds=iou_thresholds,
        area_ranges=[AREA_RANGES["all"]],
        max_dets=max_dets,
    )
    num_t, num_c = len(THRESHOLDS), len(THRESHOLDS)
    label_ap = -np.ones((num_labels, num_t))
    total_tp, total_fp = np.zeros((num_t, num_c)), np.zeros((num_t, num_c))
    total_gt = 0
    slices = []
    for k, images in enumerate(per_label):
        curve = _curve(images, 0, max_dets, num_t)
        tp, fp = _confidence_counts(curve)
        total_tp, total_fp = total_tp + tp, total_fp + fp
        if curve.num_gt == 0:
            continue
        total_gt += curve.num_gt
        label_ap[k] = _interpolated_precision(curve)[0].mean(axis=1)
        slices.append(
            {
                "slice": {"dimension": "annotationSpec", "value": label_names[k]},
                "metrics": _vertex_shape(label_ap[k], tp, fp, curve.num_gt),
            }
        )
    mean_ap = np.array([_mean_defined(label_ap[:, t]) for t in range(num_t)])
    return {"metrics": _vertex_shape(mean_ap, total_tp, total_fp, total_gt), "slices": slices}

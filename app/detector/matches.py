"""An evaluation's raw matches, and every figure the slider reads from them.

For each detection the model kept (at most ``max_dets`` per image and label, as the metrics),
the table records the ground-truth box it matched at each IoU threshold of
:data:`~app.detector.metrics.THRESHOLDS` under COCO's greedy matching, and the box of another
label it overlaps most (for label confusions). Matching runs in descending score order, so
the matches of the detections at or above any confidence cut are the first part of the full
matching: every (confidence, IoU) point is a prefix of one sorted table, read off without
looking at an image again.

Pure NumPy, like :mod:`app.detector.metrics`; boxes are ``x_min, y_min, x_max, y_max`` pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import ArrayLike, NDArray

from app.detector.metrics import (
    THRESHOLDS,
    FloatArray,
    ImageDetections,
    ImageTruth,
    box_iou,
    check_records,
    match_image,
)

IntArray = NDArray[np.int64]

MATCHES_FORMAT = "edge-automl-matches/1"
IOU_THRESHOLDS: FloatArray = np.array(THRESHOLDS)


@dataclass(frozen=True)
class MatchTable:
    """Detections in descending score order (ties in image order) and the ground truth.

    ``det_truth`` (D, T) is the index into the truth arrays of the box each detection matched
    at each IoU threshold, -1 for none. ``det_other_truth`` is the box of another label that
    the detection overlaps most (-1 if it overlaps none) and ``det_other_iou`` that overlap.
    """

    labels: NDArray[np.str_]  # (K,)
    image_ids: NDArray[np.str_]  # (I,) what callers name the images by
    image_keys: NDArray[np.str_]  # (I,) where each image's bytes are read from
    image_sizes: IntArray  # (I, 2) width, height
    det_image: IntArray  # (D,)
    det_label: IntArray  # (D,)
    det_score: FloatArray  # (D,)
    det_box: FloatArray  # (D, 4)
    det_truth: NDArray[np.int32]  # (D, T); int32 halves the largest array of the table
    det_other_truth: IntArray  # (D,)
    det_other_iou: FloatArray  # (D,)
    truth_image: IntArray  # (G,)
    truth_label: IntArray  # (G,)
    truth_box: FloatArray  # (G, 4)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def num_truths(self) -> int:
        return len(self.truth_label)

    def records(self) -> tuple[list[ImageTruth], list[ImageDetections]]:
        """The per-image records the table was built from (the detections it kept)."""
        truths, detections = [], []
        for image in range(len(self.image_ids)):
            mine = self.truth_image == image
            truths.append(ImageTruth(self.truth_box[mine], self.truth_label[mine]))
            found = self.det_image == image
            detections.append(
                ImageDetections(self.det_box[found], self.det_score[found], self.det_label[found])
            )
        return truths, detections

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        np.savez_compressed(out, format=np.array(MATCHES_FORMAT), **arrays)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MatchTable:
        if not data.startswith(b"PK"):  # an .npz is a zip; np.load would try pickle instead
            raise ValueError(f"not a match table: expected {MATCHES_FORMAT!r}")
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            found = str(stored["format"]) if "format" in stored else "unknown"
            if found != MATCHES_FORMAT:
                raise ValueError(f"match table format {found!r}, expected {MATCHES_FORMAT!r}")
            return cls(**{f.name: stored[f.name] for f in fields(cls)})


def build(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    *,
    label_names: Sequence[str],
    image_ids: Sequence[str],
    image_sizes: Sequence[tuple[int, int]],
    image_keys: Sequence[str] | None = None,
    max_dets: int = 100,
) -> MatchTable:
    """Match every image's detections to its ground truth at every IoU threshold."""
    num_labels = len(label_names)
    check_records(truths, detections, num_labels)
    if not len(truths) == len(image_ids) == len(image_sizes):
        raise ValueError("one image id and size per image are needed")
    num_t = len(IOU_THRESHOLDS)
    parts: dict[str, list[np.ndarray]] = {
        name: []
        for name in ("image", "label", "score", "box", "truth", "other", "other_iou", "order")
    }
    truth_image, truth_label, truth_box = [], [], []
    first_truth = 0
    for image, (truth, dets) in enumerate(zip(truths, detections, strict=True)):
        gt_boxes = np.asarray(truth.boxes, dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(truth.labels, dtype=np.int64).reshape(-1)
        dt_boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4)
        dt_scores = np.asarray(dets.scores, dtype=np.float64).reshape(-1)
        dt_labels = np.asarray(dets.labels, dtype=np.int64).reshape(-1)
        truth_image.append(np.full(len(gt_labels), image, dtype=np.int64))
        truth_label.append(gt_labels)
        truth_box.append(gt_boxes)
        kept_all = []
        for label in np.unique(dt_labels):
            dt_idx = np.flatnonzero(dt_labels == label)
            # The metrics' order: stable by score, then the best max_dets per image and label.
            order = dt_idx[np.argsort(-dt_scores[dt_idx], kind="mergesort")][:max_dets]
            gt_idx = np.flatnonzero(gt_labels == label)
            no_ignore = np.zeros((1, len(gt_idx)), dtype=bool)
            _, _, taken = match_image(
                box_iou(dt_boxes[order], gt_boxes[gt_idx]), no_ignore, IOU_THRESHOLDS
            )
            columns = taken[0].T  # (D, T)
            global_truth = first_truth + np.append(gt_idx, -1)  # a column of -1 stays -1
            truth_of = np.where(columns >= 0, global_truth[columns], -1)
            parts["truth"].append(truth_of)
            kept_all.append(order)
        kept = np.concatenate(kept_all) if kept_all else np.zeros(0, dtype=np.int64)
        # The other label's box each detection overlaps most: where a confusion would lie.
        ious = box_iou(dt_boxes[kept], gt_boxes)
        ious[dt_labels[kept][:, None] == gt_labels[None, :]] = -1.0
        other = ious.argmax(axis=1) if len(gt_labels) else np.zeros(len(kept), dtype=np.int64)
        other_iou = ious[np.arange(len(kept)), other] if len(gt_labels) else np.zeros(len(kept))
        overlaps = other_iou > 0
        parts["other"].append(np.where(overlaps, first_truth + other, -1))
        parts["other_iou"].append(np.where(overlaps, other_iou, 0.0))
        parts["image"].append(np.full(len(kept), image, dtype=np.int64))
        parts["label"].append(dt_labels[kept])
        parts["score"].append(dt_scores[kept])
        parts["box"].append(dt_boxes[kept])
        first_truth += len(gt_labels)

    def joined(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        items = parts[name]
        return np.concatenate(items).astype(dtype) if items else np.zeros(shape, dtype=dtype)

    scores = joined("score", (0,), np.float64)
    # Stable: equal scores keep image order, the order COCO's accumulation sees them in.
    order = np.argsort(-scores, kind="mergesort")
    return MatchTable(
        labels=np.array(list(label_names), dtype=np.str_),
        image_ids=np.array(list(image_ids), dtype=np.str_),
        image_keys=np.array(list(image_keys if image_keys is not None else image_ids), np.str_),
        image_sizes=np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2),
        det_image=joined("image", (0,), np.int64)[order],
        det_label=joined("label", (0,), np.int64)[order],
        det_score=scores[order],
        det_box=joined("box", (0, 4), np.float64)[order],
        det_truth=joined("truth", (0, num_t), np.int32)[order],
        det_other_truth=joined("other", (0,), np.int64)[order],
        det_other_iou=joined("other_iou", (0,), np.float64)[order],
        truth_image=np.concatenate(truth_image) if truth_image else np.zeros(0, np.int64),
        truth_label=np.concatenate(truth_label) if truth_label else np.zeros(0, np.int64),
        truth_box=np.concatenate(truth_box) if truth_box else np.zeros((0, 4)),
    )


# -- a point on the slider ---------------------------------------------------------------


def iou_index(iou: float) -> int:
    """The stored IoU threshold nearest to ``iou`` (matches exist only on that grid)."""
    if not IOU_THRESHOLDS[0] <= iou <= IOU_THRESHOLDS[-1]:
        raise ValueError(
            f"IoU threshold {iou} is outside {IOU_THRESHOLDS[0]}..{IOU_THRESHOLDS[-1]}"
        )
    return int(np.argmin(np.abs(IOU_THRESHOLDS - iou)))


def kept_count(table: MatchTable, confidence: float) -> int:
    """How many detections score at or above ``confidence`` (they are the table's first)."""
    # Ascending negated scores: "score >= c" is "-score <= -c", i.e. side="right".
    return int(np.searchsorted(-table.det_score, -confidence, side="right"))


@dataclass(frozen=True)
class Outcome:
    """What each detection and ground-truth box is at one (confidence, IoU) point.

    The first ``kept`` detections pass the cut. ``det_truth`` is the box each matched (-1:
    none); an unmatched detection is a *confusion* when the box of another label it overlaps
    most is missed and overlaps it by at least the IoU threshold (``det_confused`` is that
    box; a box is confused by its highest-scoring such detection only), otherwise a *false
    alarm*. A box is found, confused or missed.
    """

    confidence: float
    iou_threshold: float
    kept: int
    det_truth: NDArray[np.int32]  # (kept,)
    det_confused: IntArray  # (kept,)
    truth_found: NDArray[np.bool_]  # (G,)
    truth_confused: NDArray[np.bool_]  # (G,)

    @property
    def det_matched(self) -> NDArray[np.bool_]:
        return self.det_truth >= 0

    @property
    def det_false_alarm(self) -> NDArray[np.bool_]:
        return (self.det_truth < 0) & (self.det_confused < 0)

    @property
    def truth_missed(self) -> NDArray[np.bool_]:
        return ~self.truth_found & ~self.truth_confused


def outcome(table: MatchTable, *, confidence: float, iou: float) -> Outcome:
    t = iou_index(iou)
    kept = kept_count(table, confidence)
    det_truth = table.det_truth[:kept, t]
    truth_found = np.zeros(table.num_truths, dtype=bool)
    truth_found[det_truth[det_truth >= 0]] = True
    other = table.det_other_truth[:kept]
    candidate = (
        (det_truth < 0)
        & (other >= 0)
        & (table.det_other_iou[:kept] >= min(IOU_THRESHOLDS[t], 1 - 1e-10))
    )
    candidate[candidate] = ~truth_found[other[candidate]]
    # Detections are in score order, so the first claim on a box is the highest-scoring one.
    claims = np.flatnonzero(candidate)
    _, first = np.unique(other[claims], return_index=True)
    det_confused = np.full(kept, -1, dtype=np.int64)
    det_confused[claims[first]] = other[claims[first]]
    truth_confused = np.zeros(table.num_truths, dtype=bool)
    truth_confused[other[claims[first]]] = True
    return Outcome(
        confidence=float(confidence),
        iou_threshold=float(IOU_THRESHOLDS[t]),
        kept=kept,
        det_truth=det_truth,
        det_confused=det_confused,
        truth_found=truth_found,
        truth_confused=truth_confused,
    )


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives per label (K,)."""

    tp: IntArray
    fp: IntArray
    fn: IntArray


def counts(table: MatchTable, point: Outcome) -> Counts:
    """Per-label counts at a point; a confusion is a false positive of the predicted label and
    a false negative of the true one, as in the Vertex figures."""
    k = table.num_labels
    labels = table.det_label[: point.kept]
    tp = np.bincount(labels[point.det_matched], minlength=k)
    detected = np.bincount(labels, minlength=k)
    truths = np.bincount(table.truth_label, minlength=k)
    found = np.bincount(table.truth_label[point.truth_found], minlength=k)
    return Counts(tp=tp, fp=detected - tp, fn=truths - found)


def rates(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> tuple[FloatArray, ...]:
    """Precision, recall and F1 with the Vertex conventions of :mod:`app.detector.metrics`:
    precision 1 when nothing is detected, recall 0 without ground truth, F1 0 when both 0."""
    hits, misses, alarms = (np.asarray(a, dtype=np.float64) for a in (tp, fn, fp))
    detected, present = hits + alarms, hits + misses
    precision = np.divide(hits, detected, out=np.ones_like(hits), where=detected > 0)
    recall = np.divide(hits, present, out=np.zeros_like(hits), where=present > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return precision, recall, f1


def confusion_matrix(table: MatchTable, point: Outcome) -> IntArray:
    """(K + 1, K + 1) counts: rows are the true label, columns the predicted one; the last
    row and column are "background" (false alarms in the row, missed boxes in the column)."""
    k = table.num_labels
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    labels = table.det_label[: point.kept]
    matched = point.det_matched
    np.add.at(matrix, (table.truth_label[point.det_truth[matched]], labels[matched]), 1)
    confused = point.det_confused >= 0
    np.add.at(matrix, (table.truth_label[point.det_confused[confused]], labels[confused]), 1)
    matrix[k, :k] += np.bincount(labels[point.det_false_alarm], minlength=k)
    matrix[:k, k] += np.bincount(table.truth_label[point.truth_missed], minlength=k)
    return matrix


# -- curves over the confidence threshold ------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """Precision, recall and F1 at each distinct score, used as the confidence cut."""

    thresholds: FloatArray  # descending
    precision: FloatArray
    recall: FloatArray
    f1: FloatArray
    num_truths: int


def curve(table: MatchTable, *, iou: float, label: int | None = None) -> Curve:
    """The curve of one label, or of all labels pooled (``label=None``), at an IoU."""
    t = iou_index(iou)
    mine = np.ones(len(table.det_score), dtype=bool) if label is None else table.det_label == label
    num_truths = (
        table.num_truths if label is None else int(np.count_nonzero(table.truth_label == label))
    )
    scores = table.det_score[mine]
    tp = np.cumsum(table.det_truth[mine, t] >= 0)
    # The last detection of each run of equal scores: a cut keeps ties together.
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else tp
    tp_at = tp[ends].astype(np.float64)
    fp_at = (ends + 1) - tp_at
    precision, recall, f1 = rates(tp_at, fp_at, num_truths - tp_at)
    return Curve(scores[ends], precision, recall, f1, num_truths)


@dataclass(frozen=True)
class Recommendation:
    confidence_threshold: float
    precision: float
    recall: float
    f1: float


def _at(line: Curve, i: int) -> Recommendation:
    return Recommendation(
        confidence_threshold=float(line.thresholds[i]),
        precision=float(line.precision[i]),
        recall=float(line.recall[i]),
        f1=float(line.f1[i]),
    )


def best_f1(line: Curve) -> Recommendation | None:
    """The cut with the highest F1 (the highest such threshold on ties)."""
    if not len(line.thresholds) or line.num_truths == 0:
        return None
    return _at(line, int(np.argmax(line.f1)))


def for_precision(line: Curve, target: float) -> Recommendation | None:
    """The lowest cut whose precision reaches ``target`` (the most recall at that
    precision), or None when no cut does."""
    reaching = np.flatnonzero(line.precision >= target)
    return _at(line, int(reaching[-1])) if len(reaching) else None


# -- per-image results -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCounts:
    """Per image (I,): matched detections, false alarms, confusions and missed boxes."""

    true_positives: IntArray
    false_positives: IntArray
    confusions: IntArray
    false_negatives: IntArray

    @property
    def errors(self) -> IntArray:
        return self.false_positives + self.confusions + self.false_negatives


def image_counts(table: MatchTable, point: Outcome, *, label: int | None = None) -> ImageCounts:
    """Per-image counts at a point; with ``label``, only what involves that label (a
    confusion involves both its true and its predicted label)."""
    n = len(table.image_ids)
    det_image = table.det_image[: point.kept]
    det_mine = np.ones(point.kept, dtype=bool)
    truth_mine = np.ones(table.num_truths, dtype=bool)
    confused_mine = point.det_confused >= 0
    if label is not None:
        det_mine = table.det_label[: point.kept] == label
        truth_mine = table.truth_label == label
        truth_labels = np.append(table.truth_label, -1)  # position -1: no box
        confused_mine &= det_mine | (truth_labels[point.det_confused] == label)

    def per_image(images: IntArray) -> IntArray:
        return np.bincount(images, minlength=n).astype(np.int64)

    return ImageCounts(
        true_positives=per_image(det_image[point.det_matched & det_mine]),
        false_positives=per_image(det_image[point.det_false_alarm & det_mine]),
        confusions=per_image(det_image[confused_mine]),
        false_negatives=per_image(table.truth_image[point.truth_missed & truth_mine]),
    )

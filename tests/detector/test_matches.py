"""The slider's figures, read from the stored matches, equal a recount from the raw data."""

from __future__ import annotations

import numpy as np
import pytest

from app.detector import matches
from app.detector.metrics import THRESHOLDS, vertex_metrics
from tests.detector.test_metrics import brute_force_counts, dets, random_case, truth

# (confidence, IoU): off-grid confidences, the ends of both ranges, an IoU between grid steps.
POINTS = [(0.05, 0.5), (0.33, 0.75), (0.5, 0.3), (0.71, 0.95), (0.999, 0.6)]
SEEDS = [3, 4, 11, 14, 21, 40]


def table_of(seed: int) -> tuple[matches.MatchTable, list, list, int]:
    truths, detections, num_labels = random_case(seed)
    table = matches.build(
        truths,
        detections,
        label_names=[f"label{k}" for k in range(num_labels)],
        image_ids=[f"image{i}" for i in range(len(truths))],
        image_sizes=[(1000, 1000)] * len(truths),
    )
    return table, truths, detections, num_labels


@pytest.mark.parametrize("seed", SEEDS)
def test_slider_counts_equal_a_brute_force_recount(seed: int) -> None:
    table, truths, detections, num_labels = table_of(seed)
    for confidence, iou in POINTS:
        point = matches.outcome(table, confidence=confidence, iou=iou)
        got = matches.counts(table, point)
        for k in range(num_labels):
            tp, fp, num_gt = brute_force_counts(
                truths, detections, k, point.iou_threshold, confidence
            )
            assert (got.tp[k], got.fp[k], got.fn[k]) == (tp, fp, num_gt - tp), (k, confidence)
        precision, recall, _ = matches.rates(got.tp.sum(), got.fp.sum(), got.fn.sum())
        tp, fp = got.tp.sum(), got.fp.sum()
        assert precision == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
        num_gt = sum(len(t.labels) for t in truths)
        assert recall == pytest.approx(tp / num_gt if num_gt else 0.0)


def test_an_iou_between_grid_steps_uses_the_nearest_stored_threshold() -> None:
    assert matches.iou_index(0.5) == THRESHOLDS.index(0.5)
    assert matches.iou_index(0.52) == THRESHOLDS.index(0.5)
    assert matches.iou_index(0.53) == THRESHOLDS.index(0.55)
    assert matches.iou_index(0.99) == len(THRESHOLDS) - 1
    for outside in (0.0, 0.04, 0.995, 1.0):
        with pytest.raises(ValueError, match="outside"):
            matches.iou_index(outside)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_slider_agrees_with_the_stored_vertex_figures(seed: int) -> None:
    table, truths, detections, _ = table_of(seed)
    names = [str(name) for name in table.labels]
    vertex = vertex_metrics(truths, detections, label_names=names)
    for t, iou in enumerate(THRESHOLDS):
        for c, confidence in enumerate(THRESHOLDS):
            got = matches.counts(table, matches.outcome(table, confidence=confidence, iou=iou))
            precision, recall, f1 = matches.rates(got.tp.sum(), got.fp.sum(), got.fn.sum())
            entry = vertex["metrics"]["boundingBoxMetrics"][t]["confidenceMetrics"][c]
            assert (precision, recall, f1) == pytest.approx(
                (entry["precision"], entry["recall"], entry["f1Score"])
            )


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matrix_rows_and_columns_add_up_to_the_counts(seed: int) -> None:
    table, *_ = table_of(seed)
    k = table.num_labels
    for confidence, iou in POINTS:
        point = matches.outcome(table, confidence=confidence, iou=iou)
        got = matches.counts(table, point)
        matrix = matches.confusion_matrix(table, point)
        assert matrix[k, k] == 0
        np.testing.assert_array_equal(np.diag(matrix)[:k], got.tp)
        # Every true box is in its row once: found, confused or missed.
        np.testing.assert_array_equal(matrix[:k].sum(axis=1), got.tp + got.fn)
        # Every kept detection is in its column once: matched, a confusion or a false alarm.
        np.testing.assert_array_equal(matrix[:, :k].sum(axis=0), got.tp + got.fp)
        per_image = matches.image_counts(table, point)
        assert per_image.true_positives.sum() == got.tp.sum()
        assert per_image.errors.sum() == matrix.sum() - got.tp.sum()


def test_a_box_found_with_the_wrong_label_is_a_confusion_not_a_miss() -> None:
    cat, dog = 0, 1
    truths = [truth([[0, 0, 100, 100], [200, 200, 300, 300]], [cat, cat])]
    detections = [
        dets(
            # dog on the first cat (IoU 0.81), a cat on the second, a dog on nothing,
            # and a second dog on the first cat with a lower score (one box, one confusion).
            [[0, 0, 90, 90], [200, 200, 300, 300], [500, 500, 600, 600], [0, 0, 80, 80]],
            [0.9, 0.8, 0.7, 0.6],
            [dog, cat, dog, dog],
        )
    ]
    table = matches.build(
        truths, detections, label_names=["cat", "dog"], image_ids=["a"], image_sizes=[(800, 800)]
    )
    point = matches.outcome(table, confidence=0.5, iou=0.5)
    np.testing.assert_array_equal(
        matches.confusion_matrix(table, point),
        # true cat: 1 found, 1 taken for a dog; background: 2 dogs on nothing a cat missed.
        [[1, 1, 0], [0, 0, 0], [0, 2, 0]],
    )
    per_image = matches.image_counts(table, point, label=cat)
    assert (per_image.confusions[0], per_image.false_negatives[0]) == (1, 0)
    # Above the 0.8 IoU of the confusion, the cat is missed and the dog a false alarm.
    strict = matches.outcome(table, confidence=0.5, iou=0.85)
    np.testing.assert_array_equal(
        matches.confusion_matrix(table, strict), [[1, 0, 1], [0, 0, 0], [0, 3, 0]]
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_recommended_thresholds_are_the_best_of_every_cut(seed: int) -> None:
    table, *_, num_labels = table_of(seed)
    for label in [None, *range(num_labels)]:
        line = matches.curve(table, iou=0.5, label=label)
        cuts = np.unique(
            table.det_score if label is None else table.det_score[table.det_label == label]
        )
        f1s, precisions = {}, {}
        for cut in cuts:
            got = matches.counts(table, matches.outcome(table, confidence=cut, iou=0.5))
            pick = slice(None) if label is None else slice(label, label + 1)
            precision, _, f1 = matches.rates(
                got.tp[pick].sum(), got.fp[pick].sum(), got.fn[pick].sum()
            )
            f1s[float(cut)], precisions[float(cut)] = float(f1), float(precision)
        best = matches.best_f1(line)
        if line.num_truths == 0 or not len(cuts):
            assert best is None
            continue
        assert best is not None
        assert best.f1 == pytest.approx(max(f1s.values()))
        assert f1s[best.confidence_threshold] == pytest.approx(best.f1)
        for target in (0.5, 0.9):
            reaching = [cut for cut, p in precisions.items() if p >= target]
            chosen = matches.for_precision(line, target)
            if not reaching:
                assert chosen is None
            else:
                assert chosen is not None and chosen.confidence_threshold == min(reaching)
                assert chosen.precision >= target


def test_the_table_round_trips_through_bytes_and_refuses_other_formats() -> None:
    table, *_ = table_of(11)
    again = matches.MatchTable.from_bytes(table.to_bytes())
    for name in ("labels", "image_ids", "det_score", "det_truth", "truth_box"):
        np.testing.assert_array_equal(getattr(again, name), getattr(table, name))
    with pytest.raises(ValueError, match="expected 'edge-automl-matches/1'"):
        matches.MatchTable.from_bytes(b"not a table")


def test_an_evaluation_without_detections_or_truths_has_a_table() -> None:
    table = matches.build(
        [truth([], [])],
        [dets([], [], [])],
        label_names=["a"],
        image_ids=["x"],
        image_sizes=[(1, 1)],
    )
    point = matches.outcome(table, confidence=0.5, iou=0.5)
    assert matches.confusion_matrix(table, point).sum() == 0
    assert matches.best_f1(matches.curve(table, iou=0.5)) is None


def test_per_image_counts_of_a_label_without_any_ground_truth() -> None:
    table = matches.build(
        [truth([], [])],
        [dets([[0, 0, 10, 10]], [0.9], [0])],
        label_names=["a"],
        image_ids=["x"],
        image_sizes=[(20, 20)],
    )
    point = matches.outcome(table, confidence=0.5, iou=0.5)
    counts = matches.image_counts(table, point, label=0)
    assert (counts.false_positives[0], counts.errors[0]) == (1, 1)


def test_the_table_gives_back_the_records_it_was_built_from() -> None:
    table, truths, detections, _ = table_of(40)
    again_truths, again_detections = table.records()
    for before, after in zip(truths, again_truths, strict=True):
        np.testing.assert_array_equal(before.boxes.reshape(-1, 4), after.boxes)
        np.testing.assert_array_equal(before.labels, after.labels)
    for before, after in zip(detections, again_detections, strict=True):

        def rows(d):
            return sorted(zip(d.scores.tolist(), d.labels.tolist(), d.boxes.tolist(), strict=True))

        assert rows(after) == rows(before)

"""Evaluations over HTTP: reading, the slider, the error browser, plots and comparisons."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.detector import matches
from app.detector.metrics import THRESHOLDS
from tests.detector.test_metrics import brute_force_counts
from tests.evaluation.conftest import OTHER_SEEDS, register_evaluation
from tests.registry.test_api import LABELS
from tests.training.test_api import error_of


def test_evaluation_has_vertex_metrics_slices_coco_figures_and_its_provenance(
    client, session_factory
):
    registered = register_evaluation(client, session_factory)
    model_id, evaluation_id, scored = (
        registered["modelId"],
        registered["evaluationId"],
        registered["scored"],
    )
    [summary] = client.get(f"/v1/models/{model_id}/evaluations").json()["evaluations"]
    assert summary["id"] == evaluation_id
    assert summary["metrics"] is None, "the full metrics come with one evaluation"

    evaluation = client.get(registered["path"]).json()
    assert evaluation["name"] == f"models/{model_id}/evaluations/{evaluation_id}"
    assert (evaluation["datasetId"], evaluation["split"], evaluation["modelVersion"]) == (
        "ds1",
        "TEST",
        1,
    )
    assert evaluation["artifact"] == {"format": "pytorch", "sha256": registered["sha256"]}
    assert evaluation["imageCount"] == registered["imageCount"]
    assert evaluation["evaluatedBoundingBoxCount"] == scored.box_count
    assert evaluation["detectionCount"] == scored.detection_count
    assert (evaluation["inferenceSeconds"], evaluation["metricSeconds"]) == (0.008, 0.002)
    assert evaluation["ap50"] == pytest.approx(scored.coco["AP50"])
    assert evaluation["ap50To95"] == pytest.approx(scored.coco["AP"])
    assert evaluation["metrics"] == scored.vertex["metrics"]
    assert [e["iouThreshold"] for e in evaluation["metrics"]["boundingBoxMetrics"]] == list(
        THRESHOLDS
    )
    assert [s["slice"]["value"] for s in evaluation["slices"]] == LABELS
    assert evaluation["cocoMetrics"]["overall"] == scored.coco
    assert set(evaluation["cocoMetrics"]["perLabel"]) == set(LABELS)


def test_unknown_evaluations_are_404(client, session_factory):
    registered = register_evaluation(client, session_factory)
    model_id = registered["modelId"]
    for path in (
        "/v1/models/nope/evaluations/e1",
        f"/v1/models/{model_id}/evaluations/nope",
        f"/v1/models/{model_id}/evaluations/nope:threshold",
        f"/v1/models/{model_id}/evaluations/nope/imageResults",
        f"/v1/models/{model_id}/evaluations/nope/plots/pr.png",
    ):
        error_of(client.get(path), 404, "NOT_FOUND")
    other = register_evaluation(client, session_factory)
    error_of(
        client.get(f"/v1/models/{model_id}/evaluations/{other['evaluationId']}"), 404, "NOT_FOUND"
    )


# -- the slider --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "iou"), [(0.05, 0.5), (0.33, 0.75), (0.5, 0.3), (0.71, 0.95), (0.9, 0.52)]
)
def test_the_slider_equals_a_brute_force_recount(client, session_factory, confidence, iou):
    registered = register_evaluation(client, session_factory)
    answer = client.get(
        registered["path"] + ":threshold", params={"confidence": confidence, "iou": iou}
    ).json()
    used = THRESHOLDS[int(np.argmin(np.abs(np.array(THRESHOLDS) - iou)))]
    assert (answer["confidenceThreshold"], answer["iouThreshold"]) == (confidence, used)
    totals = np.zeros(3, dtype=int)
    for k, entry in enumerate(answer["perLabel"]):
        assert entry["label"] == LABELS[k]
        tp, fp, num_gt = brute_force_counts(
            registered["truths"], registered["found"], k, used, confidence
        )
        totals += (tp, fp, num_gt - tp)
        assert (
            entry["truePositiveCount"],
            entry["falsePositiveCount"],
            entry["falseNegativeCount"],
        ) == (tp, fp, num_gt - tp)
        assert entry["recall"] == pytest.approx(tp / num_gt if num_gt else 0.0)
        assert entry["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
    overall = answer["overall"]
    tp, fp, fn = totals
    assert [
        overall["truePositiveCount"],
        overall["falsePositiveCount"],
        overall["falseNegativeCount"],
    ] == [tp, fp, fn]
    precision, recall = tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn)
    assert (overall["precision"], overall["recall"]) == pytest.approx((precision, recall))
    assert overall["f1Score"] == pytest.approx(
        2 * precision * recall / (precision + recall) if precision + recall else 0.0
    )
    matrix = answer["confusionMatrix"]
    assert matrix["labels"] == [*LABELS, "background"]
    counts = np.array(matrix["counts"])
    assert list(np.diag(counts)[:2]) == [e["truePositiveCount"] for e in answer["perLabel"]]
    assert counts[:2].sum() == tp + fn, "every true box is in its row once"
    rows = counts.sum(axis=1, keepdims=True)
    expected = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    np.testing.assert_allclose(matrix["rowNormalized"], expected, atol=1e-6)


def test_recommended_thresholds_and_one_label(client, session_factory):
    registered = register_evaluation(client, session_factory, seeds=OTHER_SEEDS)
    answer = client.get(
        registered["path"] + ":threshold",
        params={"confidence": 0.5, "label": "square", "targetPrecision": 0.6},
    ).json()
    assert [e["label"] for e in answer["perLabel"]] == ["square"]
    assert answer["overall"] == {k: v for k, v in answer["perLabel"][0].items() if k != "label"}
    table = registered["scored"].matches
    line = matches.curve(table, iou=0.5, label=1)
    best = matches.best_f1(line)
    assert best is not None
    assert answer["recommended"]["maxF1"] == {
        "confidenceThreshold": best.confidence_threshold,
        "precision": best.precision,
        "recall": best.recall,
        "f1Score": best.f1,
    }
    target = answer["recommended"]["targetPrecision"]
    reaching = line.thresholds[line.precision >= 0.6]
    assert target["confidenceThreshold"] == pytest.approx(reaching.min())
    assert target["precision"] >= 0.6
    # At the recommended threshold the slider gives the recommended figures.
    at = client.get(
        registered["path"] + ":threshold",
        params={"confidence": best.confidence_threshold, "label": "square"},
    ).json()
    assert at["overall"]["f1Score"] == pytest.approx(best.f1)
    assert [e["label"] for e in answer["recommendedPerLabel"]] == ["square"]
    unreachable = client.get(
        registered["path"] + ":threshold", params={"targetPrecision": 1.0, "label": "square"}
    ).json()["recommended"]
    if (line.precision < 1.0).all():
        assert unreachable["targetPrecision"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"confidence": 1.5}, "confidence"),
        ({"iou": 0.01}, "iou"),
        ({"iou": 1.0}, "iou"),
        ({"label": "triangle"}, "label"),
        ({"targetPrecision": 0}, "targetPrecision"),
    ],
)
def test_a_bad_point_is_a_400_naming_the_parameter(client, session_factory, params, field):
    registered = register_evaluation(client, session_factory)
    error = error_of(
        client.get(registered["path"] + ":threshold", params=params), 400, "INVALID_ARGUMENT"
    )
    assert field in error["message"]


def test_an_evaluation_without_stored_matches_asks_for_a_new_one(client, session_factory):
    registered = register_evaluation(client, session_factory)
    client.app.state.blobs.delete(
        f"models/{registered['modelId']}/evaluations/{registered['evaluationId']}/matches.npz"
    )
    error = error_of(client.get(registered["path"] + ":threshold"), 400, "FAILED_PRECONDITION")
    assert "evaluate the model again" in error["message"]


# -- the error browser -------------------------------------------------------------------


def test_image_results_page_through_images_with_errors_most_first(client, session_factory):
    registered = register_evaluation(client, session_factory)
    params = {"confidence": 0.3, "iou": 0.5, "pageSize": 2}
    results, token, total = [], None, None
    while True:
        page = client.get(
            registered["path"] + "/imageResults", params={**params, "pageToken": token or ""}
        ).json()
        results += page["imageResults"]
        total = page["totalSize"]
        token = page["nextPageToken"]
        if token is None:
            break
    assert len(results) == total > 2
    errors = [r["errorCount"] for r in results]
    assert errors == sorted(errors, reverse=True) and min(errors) > 0
    table = registered["scored"].matches
    point = matches.outcome(table, confidence=0.3, iou=0.5)
    per_image = matches.image_counts(table, point)
    assert total == int(np.count_nonzero(per_image.errors))
    for result in results:
        detections, truths = result["detections"], result["groundTruth"]
        outcomes = [d["outcome"] for d in detections]
        assert result["truePositiveCount"] == outcomes.count("TRUE_POSITIVE")
        assert result["falsePositiveCount"] == outcomes.count("FALSE_POSITIVE")
        assert result["confusionCount"] == outcomes.count("CONFUSION")
        assert result["falseNegativeCount"] == [t["outcome"] for t in truths].count("MISSED")
        assert all(d["score"] >= 0.3 for d in detections)
        for d in detections:
            if d["outcome"] == "TRUE_POSITIVE":
                assert truths[d["groundTruthIndex"]]["label"] == d["label"]
            if d["outcome"] == "CONFUSION":
                assert truths[d["groundTruthIndex"]]["outcome"] == "CONFUSED"
                assert truths[d["groundTruthIndex"]]["label"] != d["label"]
        assert all(0 <= t["xMin"] <= t["xMax"] <= 2 for t in truths), "relative boxes"

    one = results[0]
    again = client.get(
        registered["path"] + f"/imageResults/{one['imageId']}", params={"confidence": 0.3}
    ).json()
    assert again == one


def test_image_results_by_label_and_kind_of_error(client, session_factory):
    registered = register_evaluation(client, session_factory)
    path = registered["path"] + "/imageResults"
    misses = client.get(
        path, params={"confidence": 0.8, "orderBy": "falseNegativeCount", "pageSize": 100}
    ).json()["imageResults"]
    counts = [r["falseNegativeCount"] for r in misses]
    assert counts == sorted(counts, reverse=True) and min(counts) > 0
    squares = client.get(path, params={"label": "square", "pageSize": 100}).json()
    for result in squares["imageResults"]:
        involved = [d["label"] for d in result["detections"] if d["outcome"] != "TRUE_POSITIVE"]
        involved += [t["label"] for t in result["groundTruth"] if t["outcome"] != "FOUND"]
        assert "square" in involved
    everything = client.get(path, params={"onlyErrors": "false", "pageSize": 100}).json()
    assert everything["totalSize"] == registered["imageCount"]

    error_of(client.get(path, params={"orderBy": "score"}), 400, "INVALID_ARGUMENT")
    first = client.get(path, params={"pageSize": 1}).json()
    error = error_of(
        client.get(path, params={"pageSize": 1, "iou": 0.75, "pageToken": first["nextPageToken"]}),
        400,
        "INVALID_ARGUMENT",
    )
    assert "pageToken" in error["message"]
    error_of(client.get(registered["path"] + "/imageResults/nope"), 404, "NOT_FOUND")


def test_an_image_result_renders_as_a_png_with_its_boxes(client, session_factory):
    registered = register_evaluation(client, session_factory)
    page = client.get(registered["path"] + "/imageResults", params={"pageSize": 1}).json()
    image_id = page["imageResults"][0]["imageId"]
    # The registered evaluation's images are not stored: say so, in Google's error shape.
    error_of(client.get(registered["path"] + f"/imageResults/{image_id}:render"), 404, "NOT_FOUND")
    table = registered["scored"].matches
    key = str(table.image_keys[list(table.image_ids).index(image_id)])
    client.app.state.blobs.put(key, grey_jpeg(1000, 1000))
    response = client.get(registered["path"] + f"/imageResults/{image_id}:render")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == (1000, 1000)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 2, "boxes are drawn on the grey image"


def grey_jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(out, format="JPEG")
    return out.getvalue()


# -- plots -------------------------------------------------------------------------------


@pytest.mark.parametrize("plot", ["pr", "threshold", "confusion"])
def test_plots_are_pngs(client, session_factory, plot):
    registered = register_evaluation(client, session_factory)
    response = client.get(registered["path"] + f"/plots/{plot}.png", params={"iou": 0.5})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size[0] >= 400
    error_of(client.get(registered["path"] + "/plots/roc.png"), 400, "INVALID_ARGUMENT")


# -- comparing ---------------------------------------------------------------------------


def test_compare_gives_per_label_ap_deltas_and_the_change_at_a_point(client, session_factory):
    base = register_evaluation(client, session_factory)
    candidate = register_evaluation(client, session_factory, seeds=OTHER_SEEDS)
    name = f"models/{candidate['modelId']}/evaluations/{candidate['evaluationId']}"
    answer = client.get(
        base["path"] + ":compare", params={"candidate": name, "confidence": 0.4, "iou": 0.5}
    ).json()
    assert answer["candidate"] == name and answer["base"].endswith(base["evaluationId"])
    assert [c["label"] for c in answer["perLabel"]] == LABELS
    for entry in [answer["overall"], *answer["perLabel"]]:
        for figure in ("ap", "ap50", "ap75"):
            old, new = entry["base"][figure], entry["candidate"][figure]
            assert entry["delta"][figure] == pytest.approx(new - old)
        for figure in ("precision", "recall", "f1Score"):
            old, new = (
                entry["base"]["atThreshold"][figure],
                entry["candidate"]["atThreshold"][figure],
            )
            assert entry["delta"][figure] == pytest.approx(new - old)
    circle = answer["perLabel"][0]
    assert circle["base"]["ap50"] == pytest.approx(base["scored"].coco_per_label["circle"]["AP50"])
    slider = client.get(base["path"] + ":threshold", params={"confidence": 0.4}).json()
    assert circle["base"]["atThreshold"] == {
        k: v for k, v in slider["perLabel"][0].items() if k != "label"
    }
    # The same evaluation by its bare id compares to itself with zero deltas.
    same = client.get(base["path"] + ":compare", params={"candidate": base["evaluationId"]}).json()
    assert same["overall"]["delta"]["ap"] == 0 and same["overall"]["delta"]["f1Score"] == 0
    error = error_of(
        client.get(base["path"] + ":compare", params={"candidate": "models/x"}),
        400,
        "INVALID_ARGUMENT",
    )
    assert "candidate" in error["message"]

"""Rules for evaluations: store and record them, evaluate on demand, and read the slider,
confusion matrix, per-image results and comparisons from the stored matches.

An evaluation is two immutable blobs beside its row: ``metrics.json`` (Vertex's metrics,
per-label slices, COCO's figures) and ``matches.npz`` (every detection's matches, see
:mod:`app.detector.matches`). Every figure at a (confidence, IoU) point is read from the
matches: no image is looked at again.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session

from app.datasets import service as datasets_service
from app.db.dataset_image import Split
from app.db.evaluation import Evaluation
from app.db.job import Job
from app.db.model_version import ModelVersion
from app.detector import matches
from app.detector.types import Sample
from app.errors import FailedPrecondition, InvalidInput, NotFound
from app.evaluation import repository
from app.evaluation.schemas import (
    ConfusionMatrix,
    EvaluatedDetection,
    EvaluatedTruth,
    EvaluationComparison,
    EvaluationCreate,
    FigureDeltas,
    ImageResult,
    LabelComparison,
    LabelPointCounts,
    LabelRecommendedThresholds,
    PointCounts,
    Recommendation,
    RecommendedThresholds,
    SideFigures,
    ThresholdResult,
)
from app.jobs import service as jobs_service
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.registry import service as registry_service

if TYPE_CHECKING:
    from app.detector.types import Evaluation as Scored

EVALUATE_KIND = "evaluation.evaluate"
ARTIFACT_PYTORCH = registry_service.PYTORCH
# Tables kept decoded in memory: a slider drag asks for many points of the same evaluation.
MATCH_TABLE_CACHE_SIZE = 8


# -- storage layout ----------------------------------------------------------------------


def evaluation_prefix(model_id: str, evaluation_id: str) -> str:
    return f"{registry_service.model_prefix(model_id)}evaluations/{evaluation_id}/"


def metrics_key(model_id: str, evaluation_id: str) -> str:
    return f"{evaluation_prefix(model_id, evaluation_id)}metrics.json"


def matches_key(model_id: str, evaluation_id: str) -> str:
    return f"{evaluation_prefix(model_id, evaluation_id)}matches.npz"


def discard_blobs(blobs: BlobStore, *, model_id: str, evaluation_id: str) -> None:
    """Delete what an evaluation that did not finish stored."""
    for info in list(blobs.list(evaluation_prefix(model_id, evaluation_id))):
        blobs.delete(info.key)


# -- recording an evaluation -------------------------------------------------------------


def artifact_of(
    session: Session, version: ModelVersion, artifact_format: str
) -> registry_service.VersionFile:
    """The file of a model version in a format: its weights, or an exported file."""
    found = registry_service.file_of(session, version, artifact_format)
    if found is None:
        raise FailedPrecondition(
            f"model {version.model_id!r} version {version.version} has no {artifact_format} "
            f"file: export it first (POST /v1/models/{version.model_id}:export)"
        )
    return found


@dataclass(frozen=True)
class EvaluationSummary:
    bounding_box_mean_average_precision: float | None
    ap50: float | None
    ap50_95: float | None
    evaluated_bounding_box_count: int
    image_count: int

    @classmethod
    def of(cls, scored: Scored) -> EvaluationSummary:
        metrics = scored.vertex["metrics"]
        return cls(
            bounding_box_mean_average_precision=_defined(
                metrics["boundingBoxMeanAveragePrecision"]
            ),
            ap50=_defined(scored.coco.get("AP50")),
            ap50_95=_defined(scored.coco.get("AP")),
            evaluated_bounding_box_count=int(metrics["evaluatedBoundingBoxCount"]),
            image_count=scored.image_count,
        )


def _defined(value: float | None) -> float | None:
    """COCO writes -1 for a figure it cannot define (no ground truth): None on our rows."""
    return None if value is None or value < 0 else float(value)


def metrics_document(scored: Scored) -> bytes:
    """The stored form of an evaluation: Vertex's ``metrics`` and ``slices``, COCO's
    figures overall and per label, and the counts and times."""
    return json.dumps(
        {
            "metrics": scored.vertex["metrics"],
            "slices": scored.vertex["slices"],
            "cocoMetrics": {"overall": scored.coco, "perLabel": scored.coco_per_label},
            "imageCount": scored.image_count,
            "boxCount": scored.box_count,
            "detectionCount": scored.detection_count,
            "seconds": scored.seconds,
            "inferenceSeconds": scored.inference_seconds,
            "metricSeconds": scored.metric_seconds,
        }
    ).encode()


def store_scored(blobs: BlobStore, *, model_id: str, evaluation_id: str, scored: Scored) -> str:
    """Write an evaluation's two blobs (before its row is committed); returns the metrics key."""
    blobs.put(
        matches_key(model_id, evaluation_id),
        scored.matches.to_bytes(),
        content_type="application/octet-stream",
    )
    key = metrics_key(model_id, evaluation_id)
    blobs.put(key, metrics_document(scored), content_type="application/json")
    return key


# Vertex AI's IoU thresholds that make COCO's AP@[.5:.95] (its 0.50, 0.55 ... 0.95 entries).
COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def remote_metrics_document(
    metrics: dict[str, Any], slices: Sequence[dict[str, Any]], *, image_count: int
) -> dict[str, Any]:
    """The stored form of an evaluation made elsewhere (Vertex AI), in §3.3's shape.

    Vertex reports AP per IoU threshold, not COCOeval's figures: ``cocoMetrics`` carries AP50
    (its 0.5 entry) and AP (the mean of its 0.50 ... 0.95 entries) where it has them. No
    detections come with it, so the slider and per-image views are not available for it.
    """
    by_iou = {
        round(float(entry["iouThreshold"]), 2): float(entry["meanAveragePrecision"])
        for entry in metrics.get("boundingBoxMetrics", [])
    }
    overall: dict[str, float] = {}
    if 0.5 in by_iou:
        overall["AP50"] = by_iou[0.5]
    if all(t in by_iou for t in COCO_IOU_THRESHOLDS):
        overall["AP"] = sum(by_iou[t] for t in COCO_IOU_THRESHOLDS) / len(COCO_IOU_THRESHOLDS)
    return {
        "metrics": metrics,
        "slices": list(slices),
        "cocoMetrics": {"overall": overall, "perLabel": {}},
        "imageCount": image_count,
        "boxCount": int(metrics.get("evaluatedBoundingBoxCount", 0)),
        "source": "vertex",
    }


def store_document(
    blobs: BlobStore, *, model_id: str, evaluation_id: str, document: dict[str, Any]
) -> tuple[str, EvaluationSummary]:
    """Write a metrics document made elsewhere; its key and the row's summary figures."""
    key = metrics_key(model_id, evaluation_id)
    blobs.put(key, json.dumps(document).encode(), content_type="application/json")
    metrics = document["metrics"]
    coco = document["cocoMetrics"]["overall"]
    summary = EvaluationSummary(
        bounding_box_mean_average_precision=_defined(
            metrics.get("boundingBoxMeanAveragePrecision")
        ),
        ap50=_defined(coco.get("AP50")),
        ap50_95=_defined(coco.get("AP")),
        evaluated_bounding_box_count=int(metrics.get("evaluatedBoundingBoxCount", 0)),
        image_count=int(document.get("imageCount", 0)),
    )
    return key, summary


def add_evaluation(
    session: Session,
    *,
    evaluation_id: str,
    model_version: ModelVersion,
    dataset_id: str,
    split: str,
    artifact: registry_service.VersionFile,
    metrics_blob_key: str,
    summary: EvaluationSummary,
) -> Evaluation:
    """Record an evaluation of a model version (its blobs must already be stored)."""
    return repository.add(
        session,
        Evaluation(
            id=evaluation_id,
            model_id=model_version.model_id,
            model_version=model_version.version,
            dataset_id=dataset_id,
            split=split,
            artifact_format=artifact.format,
            artifact_sha256=artifact.sha256,
            metrics_blob_key=metrics_blob_key,
            bounding_box_mean_average_precision=summary.bounding_box_mean_average_precision,
            ap50=summary.ap50,
            ap50_95=summary.ap50_95,
            evaluated_bounding_box_count=summary.evaluated_bounding_box_count,
            image_count=summary.image_count,
            created_at=utcnow(),
        ),
    )


# -- evaluate on demand ------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSamples:
    image_ids: list[str]
    samples: list[Sample]


def split_samples(
    session: Session, *, dataset_id: str, split: Split, labels: Sequence[str]
) -> SplitSamples:
    """The labelled images of one split as samples indexed by the model's ``labels``.

    Refused when a box has a label the model does not know (it could never be found) or
    when the split has no labelled image.
    """
    index = {label: i for i, label in enumerate(labels)}
    image_ids: list[str] = []
    samples: list[Sample] = []
    unknown: set[str] = set()
    for dataset_image, image, boxes in datasets_service.labelled_images(
        session, dataset_id=dataset_id
    ):
        if dataset_image.split != split.value:
            continue
        unknown.update(b.label for b in boxes if b.label not in index)
        image_ids.append(dataset_image.id)
        samples.append(
            Sample(
                key=image.blob_key,
                boxes=np.array(
                    [[b.x_min, b.y_min, b.x_max, b.y_max] for b in boxes], dtype=np.float32
                ).reshape(-1, 4),
                labels=np.array([index.get(b.label, -1) for b in boxes], dtype=np.int64),
            )
        )
    if unknown:
        raise InvalidInput.field(
            "datasetId",
            f"the {split.value} split of dataset {dataset_id!r} has labels the model does not "
            f"know: {sorted(unknown)}; the model knows {list(labels)}",
        )
    if not samples:
        raise InvalidInput.field(
            "split", f"dataset {dataset_id!r} has no labelled images in its {split.value} split"
        )
    return SplitSamples(image_ids, samples)


def create(session: Session, *, model_id: str, evaluation_in: EvaluationCreate) -> Job:
    """Check the request and queue the evaluation as an operation (in the caller's
    transaction); the evaluation appears in the model's list when the operation succeeds."""
    version = registry_service.version_of(
        session, model_id=model_id, version=evaluation_in.model_version
    )
    artifact = artifact_of(session, version, evaluation_in.artifact_format)
    model = registry_service.get(session, model_id=model_id)
    dataset = datasets_service.get(session, dataset_id=evaluation_in.dataset_id)
    found = split_samples(
        session, dataset_id=dataset.id, split=evaluation_in.split, labels=model.labels
    )
    evaluation_id = new_id()
    return jobs_service.enqueue(
        session,
        kind=EVALUATE_KIND,
        payload={
            "evaluationId": evaluation_id,
            "modelId": model_id,
            "modelVersion": version.version,
            "datasetId": dataset.id,
            "split": evaluation_in.split.value,
            "artifactFormat": artifact.format,
        },
        description=(
            f"evaluate {model_id} v{version.version} ({artifact.format}) on "
            f"{len(found.samples)} {evaluation_in.split.value} images of {dataset.id}"
        ),
    )


# -- reading -----------------------------------------------------------------------------


def list_evaluations(
    session: Session, *, model_id: str, page_size: int, after: PageCursor | None
) -> tuple[Sequence[Evaluation], PageCursor | None]:
    registry_service.get(session, model_id=model_id)
    rows = repository.list_page(session, model_id=model_id, limit=page_size + 1, after=after)
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], PageCursor(time=last.created_at, id=last.id)


def get_evaluation(session: Session, *, model_id: str, evaluation_id: str) -> Evaluation:
    evaluation = (
        repository.get(session, model_id=model_id, evaluation_id=evaluation_id)
        if is_valid_id(evaluation_id)
        else None
    )
    if evaluation is None:
        registry_service.get(session, model_id=model_id)
        raise NotFound(f"evaluation {evaluation_id!r} not found in model {model_id!r}")
    return evaluation


def evaluation_name(evaluation: Evaluation) -> str:
    return f"models/{evaluation.model_id}/evaluations/{evaluation.id}"


def evaluation_metrics(blobs: BlobStore, evaluation: Evaluation) -> dict[str, Any]:
    """The stored metrics document: ``metrics``, ``slices``, ``cocoMetrics``, counts, times."""
    document: dict[str, Any] = json.loads(blobs.get(evaluation.metrics_blob_key))
    return document


_tables: OrderedDict[tuple[str, str], matches.MatchTable] = OrderedDict()
_tables_lock = threading.Lock()


def match_table(blobs: BlobStore, evaluation: Evaluation) -> matches.MatchTable:
    """The evaluation's matches, decoded once and kept (the blob never changes)."""
    key = matches_key(evaluation.model_id, evaluation.id)
    cache_key = (key, evaluation.created_at.isoformat())
    with _tables_lock:
        if cache_key in _tables:
            _tables.move_to_end(cache_key)
            return _tables[cache_key]
    if not blobs.exists(key):
        raise FailedPrecondition(
            f"evaluation {evaluation_name(evaluation)!r} has no stored detections (it was made "
            "by Vertex AI, or before matches were stored); evaluate the model again here "
            "(POST /v1/models/{modelId}/evaluations)"
        )
    table = matches.MatchTable.from_bytes(blobs.get(key))
    with _tables_lock:
        _tables[cache_key] = table
        while len(_tables) > MATCH_TABLE_CACHE_SIZE:
            _tables.popitem(last=False)
    return table


# -- a point on the slider ---------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A checked (confidence, IoU) point of an evaluation."""

    table: matches.MatchTable
    outcome: matches.Outcome
    label: int | None  # the one label asked for, if any


def _label_index(table: matches.MatchTable, label: str | None) -> int | None:
    if label is None:
        return None
    names = [str(name) for name in table.labels]
    if label not in names:
        raise InvalidInput.field("label", f"{label!r} is not one of the model's labels {names}")
    return names.index(label)


def point(
    blobs: BlobStore, evaluation: Evaluation, *, confidence: float, iou: float, label: str | None
) -> Point:
    if not 0.0 <= confidence <= 1.0:
        raise InvalidInput.field("confidence", f"{confidence} is outside 0..1")
    try:
        matches.iou_index(iou)
    except ValueError as exc:
        raise InvalidInput.field("iou", str(exc)) from None
    table = match_table(blobs, evaluation)
    return Point(
        table=table,
        outcome=matches.outcome(table, confidence=confidence, iou=iou),
        label=_label_index(table, label),
    )


def _point_counts(tp: int, fp: int, fn: int) -> PointCounts:
    precision, recall, f1 = matches.rates(tp, fp, fn)
    return PointCounts(
        true_positive_count=tp,
        false_positive_count=fp,
        false_negative_count=fn,
        precision=float(precision),
        recall=float(recall),
        f1_score=float(f1),
    )


def _recommendation(found: matches.Recommendation | None) -> Recommendation | None:
    if found is None:
        return None
    return Recommendation(
        confidence_threshold=found.confidence_threshold,
        precision=found.precision,
        recall=found.recall,
        f1_score=found.f1,
    )


def _recommended(
    table: matches.MatchTable, iou: float, label: int | None, target: float | None
) -> RecommendedThresholds:
    line = matches.curve(table, iou=iou, label=label)
    return RecommendedThresholds(
        max_f1=_recommendation(matches.best_f1(line)),
        target_precision=None
        if target is None
        else _recommendation(matches.for_precision(line, target)),
    )


def confusion(at: Point) -> ConfusionMatrix:
    counts = matches.confusion_matrix(at.table, at.outcome)
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    return ConfusionMatrix(
        labels=[*map(str, at.table.labels), "background"],
        counts=counts.tolist(),
        row_normalized=np.round(normalized, 6).tolist(),
    )


def threshold(
    evaluation: Evaluation, at: Point, *, target_precision: float | None
) -> ThresholdResult:
    """Precision, recall, F1 and counts at a point, overall and per label, the recommended
    thresholds and the confusion matrix."""
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise InvalidInput.field("targetPrecision", f"{target_precision} is outside (0, 1]")
    table, iou = at.table, at.outcome.iou_threshold
    counts = matches.counts(table, at.outcome)
    names = [str(name) for name in table.labels]
    shown = range(len(names)) if at.label is None else [at.label]
    per_label = [
        LabelPointCounts(
            label=names[k],
            **_point_counts(int(counts.tp[k]), int(counts.fp[k]), int(counts.fn[k])).model_dump(),
        )
        for k in shown
    ]
    pick = list(shown)
    return ThresholdResult(
        evaluation=evaluation_name(evaluation),
        confidence_threshold=at.outcome.confidence,
        iou_threshold=iou,
        overall=_point_counts(
            int(counts.tp[pick].sum()), int(counts.fp[pick].sum()), int(counts.fn[pick].sum())
        ),
        per_label=per_label,
        recommended=_recommended(table, iou, at.label, target_precision),
        recommended_per_label=[
            LabelRecommendedThresholds(
                label=names[k], **_recommended(table, iou, k, target_precision).model_dump()
            )
            for k in shown
        ],
        confusion_matrix=confusion(at),
    )


# -- per-image results -------------------------------------------------------------------

IMAGE_ORDERS = {
    "errorCount": lambda c: c.errors,
    "falsePositiveCount": lambda c: c.false_positives,
    "falseNegativeCount": lambda c: c.false_negatives,
    "confusionCount": lambda c: c.confusions,
}


def image_order(at: Point, *, order_by: str, only_errors: bool) -> list[int]:
    """Image indices, most errors (of the ``order_by`` kind) first, ties in evaluation order;
    with ``only_errors``, images without such errors are left out."""
    key = IMAGE_ORDERS.get(order_by.removesuffix(" desc"))
    if key is None:
        raise InvalidInput.field(
            "orderBy", f"{order_by!r} is not one of {sorted(IMAGE_ORDERS)} (always descending)"
        )
    values = key(matches.image_counts(at.table, at.outcome, label=at.label))
    order = np.argsort(-values, kind="stable")
    if only_errors:
        order = order[values[order] > 0]
    return [int(i) for i in order]


def image_results(at: Point, images: Sequence[int]) -> list[ImageResult]:
    """Images' detections and ground truth at a point, boxes relative to each image."""
    counts = matches.image_counts(at.table, at.outcome, label=at.label)
    return [_image_result(at, image, counts) for image in images]


def _image_result(at: Point, image: int, counts: matches.ImageCounts) -> ImageResult:
    table, outcome = at.table, at.outcome
    width, height = (int(v) for v in table.image_sizes[image])
    scale = np.array([width, height, width, height], dtype=np.float64)
    truths = np.flatnonzero(table.truth_image == image)
    position = {int(g): i for i, g in enumerate(truths)}
    names = [str(name) for name in table.labels]

    def corners(box: np.ndarray) -> dict[str, float]:
        x_min, y_min, x_max, y_max = (round(float(v), 6) for v in box / scale)
        return {"x_min": x_min, "y_min": y_min, "x_max": x_max, "y_max": y_max}

    detections = []
    for d in np.flatnonzero(table.det_image[: outcome.kept] == image):
        matched, confused = int(outcome.det_truth[d]), int(outcome.det_confused[d])
        kind = (
            "TRUE_POSITIVE" if matched >= 0 else "CONFUSION" if confused >= 0 else "FALSE_POSITIVE"
        )
        target = matched if matched >= 0 else confused
        detections.append(
            EvaluatedDetection(
                label=names[table.det_label[d]],
                score=round(float(table.det_score[d]), 6),
                outcome=kind,
                ground_truth_index=position[target] if target >= 0 else None,
                **corners(table.det_box[d]),
            )
        )
    ground_truth = [
        EvaluatedTruth(
            label=names[table.truth_label[g]],
            outcome="FOUND"
            if outcome.truth_found[g]
            else "CONFUSED"
            if outcome.truth_confused[g]
            else "MISSED",
            **corners(table.truth_box[g]),
        )
        for g in truths
    ]
    return ImageResult(
        image_id=str(table.image_ids[image]),
        width=width,
        height=height,
        error_count=int(counts.errors[image]),
        true_positive_count=int(counts.true_positives[image]),
        false_positive_count=int(counts.false_positives[image]),
        confusion_count=int(counts.confusions[image]),
        false_negative_count=int(counts.false_negatives[image]),
        detections=detections,
        ground_truth=ground_truth,
    )


def image_index(table: matches.MatchTable, image_id: str) -> int:
    found = np.flatnonzero(table.image_ids == image_id)
    if not len(found):
        raise NotFound(f"image {image_id!r} is not part of this evaluation")
    return int(found[0])


# -- comparing two evaluations -----------------------------------------------------------


def _side(coco: dict[str, float], counts: PointCounts) -> SideFigures:
    return SideFigures(
        ap=_defined(coco.get("AP")),
        ap50=_defined(coco.get("AP50")),
        ap75=_defined(coco.get("AP75")),
        at_threshold=counts,
    )


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _comparison(label: str, base: SideFigures, candidate: SideFigures) -> LabelComparison:
    new, old = candidate.at_threshold, base.at_threshold
    return LabelComparison(
        label=label,
        base=base,
        candidate=candidate,
        delta=FigureDeltas(
            ap=_minus(candidate.ap, base.ap),
            ap50=_minus(candidate.ap50, base.ap50),
            ap75=_minus(candidate.ap75, base.ap75),
            precision=new.precision - old.precision,
            recall=new.recall - old.recall,
            f1_score=new.f1_score - old.f1_score,
        ),
    )


def compare(
    blobs: BlobStore,
    base: Evaluation,
    candidate: Evaluation,
    *,
    confidence: float,
    iou: float,
) -> EvaluationComparison:
    """Per-label AP deltas and the change at one (confidence, IoU) point (candidate - base)."""
    sides = []
    for evaluation in (base, candidate):
        at = point(blobs, evaluation, confidence=confidence, iou=iou, label=None)
        counts = matches.counts(at.table, at.outcome)
        names = [str(name) for name in at.table.labels]
        coco = evaluation_metrics(blobs, evaluation)["cocoMetrics"]
        per_label = {
            name: _side(
                coco["perLabel"].get(name, {}),
                _point_counts(int(counts.tp[k]), int(counts.fp[k]), int(counts.fn[k])),
            )
            for k, name in enumerate(names)
        }
        overall = _side(
            coco["overall"],
            _point_counts(int(counts.tp.sum()), int(counts.fp.sum()), int(counts.fn.sum())),
        )
        sides.append((names, overall, per_label, at.outcome.iou_threshold))
    (base_names, base_overall, base_labels, used_iou), (names, overall, labels, _) = sides
    if set(base_names) != set(names):
        raise InvalidInput.field(
            "candidate",
            f"the evaluations have different labels: {sorted(base_names)} and {sorted(names)}",
        )
    return EvaluationComparison(
        base=evaluation_name(base),
        candidate=evaluation_name(candidate),
        confidence_threshold=confidence,
        iou_threshold=used_iou,
        overall=_comparison("", base_overall, overall),
        per_label=[_comparison(name, base_labels[name], labels[name]) for name in base_names],
    )


def parse_evaluation_name(name: str, *, model_id: str) -> tuple[str, str]:
    """``models/{m}/evaluations/{e}``, or a bare evaluation id of the same model."""
    parts = name.strip().split("/")
    if len(parts) == 1 and is_valid_id(parts[0]):
        return model_id, parts[0]
    if len(parts) == 4 and parts[0] == "models" and parts[2] == "evaluations":
        return parts[1], parts[3]
    raise InvalidInput.field(
        "candidate", f"{name!r} is not models/{{modelId}}/evaluations/{{evaluationId}}"
    )

"""Evaluations on the wire: Vertex AI's metrics shape, the slider, per-image results."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.db.dataset_image import Split
from app.kit.schemas import ApiModel

ArtifactFormat = Literal["pytorch", "onnx", "tflite", "tflite-int8"]


class ConfidenceMetrics(ApiModel):
    confidence_threshold: float
    recall: float
    precision: float
    f1_score: float


class BoundingBoxMetrics(ApiModel):
    iou_threshold: float
    mean_average_precision: float = Field(description="COCO 101-point AP at this IoU threshold.")
    confidence_metrics: list[ConfidenceMetrics]


class ObjectDetectionMetrics(ApiModel):
    """Vertex AI's image object-detection evaluation metrics (DESIGN.md §3.3)."""

    bounding_box_mean_average_precision: float = Field(
        description="Mean of meanAveragePrecision over the IoU thresholds."
    )
    evaluated_bounding_box_count: int = Field(description="Ground-truth boxes evaluated.")
    bounding_box_metrics: list[BoundingBoxMetrics] = Field(
        description="IoU thresholds 0.05, 0.10 ... 0.95, 0.96 ... 0.99; in each, the same "
        "confidence thresholds."
    )


class SliceSpec(ApiModel):
    dimension: Literal["annotationSpec"] = "annotationSpec"
    value: str = Field(description="The label name.")


class EvaluationSlice(ApiModel):
    slice: SliceSpec
    metrics: ObjectDetectionMetrics


class CocoMetrics(ApiModel):
    """COCOeval's 12 bbox figures (AP, AP50, AP75, APsmall ... ARlarge); -1 where undefined."""

    overall: dict[str, float]
    per_label: dict[str, dict[str, float]]


class EvaluationArtifact(ApiModel):
    format: ArtifactFormat
    sha256: str = Field(description="SHA-256 of the file that was scored.")


class EvaluationRead(ApiModel):
    id: str
    name: str = Field(description="models/{modelId}/evaluations/{id}")
    model_id: str
    model_version: int
    dataset_id: str
    split: Split
    artifact: EvaluationArtifact = Field(description="The model file that was scored.")
    bounding_box_mean_average_precision: float | None = None
    ap50: float | None = Field(default=None, description="COCO AP at IoU 0.5.")
    ap50_95: float | None = Field(
        default=None, alias="ap50To95", description="COCO AP averaged over IoU 0.5 to 0.95."
    )
    evaluated_bounding_box_count: int
    image_count: int
    detection_count: int | None = Field(
        default=None, description="Detections kept for scoring; present when reading one."
    )
    inference_seconds: float | None = Field(
        default=None, description="Time spent predicting; present when reading one."
    )
    metric_seconds: float | None = Field(
        default=None, description="Time spent matching and scoring; present when reading one."
    )
    metrics: ObjectDetectionMetrics | None = Field(
        default=None, description="Present when reading one evaluation."
    )
    slices: list[EvaluationSlice] | None = Field(
        default=None, description="Per label; present when reading one evaluation."
    )
    coco_metrics: CocoMetrics | None = Field(
        default=None, description="Present when reading one evaluation."
    )
    create_time: datetime


class EvaluationList(ApiModel):
    evaluations: list[EvaluationRead]
    next_page_token: str | None = None


class EvaluationCreate(ApiModel):
    """Evaluate a model on a labelled split of any dataset whose labels the model knows."""

    dataset_id: str
    split: Split = Field(default=Split.TEST, description="The split to score on.")
    artifact_format: ArtifactFormat = Field(
        default="pytorch",
        description="Which file to score: the PyTorch weights, or an exported ONNX or TFLite "
        "file (after POST /v1/models/{modelId}:export), so the figures describe what ships.",
    )
    model_version: int | None = Field(default=None, ge=1, description="Default: the latest.")


# -- the slider --------------------------------------------------------------------------


class PointCounts(ApiModel):
    """Figures at one (confidence, IoU) point. A box found with the wrong label counts as a
    false positive of the predicted label and a false negative of the true one."""

    true_positive_count: int
    false_positive_count: int
    false_negative_count: int
    precision: float = Field(description="1.0 when nothing is detected.")
    recall: float = Field(description="0.0 when there is no ground truth.")
    f1_score: float


class LabelPointCounts(PointCounts):
    label: str


class Recommendation(ApiModel):
    confidence_threshold: float
    precision: float
    recall: float
    f1_score: float


class RecommendedThresholds(ApiModel):
    max_f1: Recommendation | None = Field(
        default=None, description="The confidence threshold with the highest F1."
    )
    target_precision: Recommendation | None = Field(
        default=None,
        description="The lowest threshold whose precision reaches targetPrecision (the most "
        "recall at that precision); absent when no threshold reaches it or none was asked.",
    )


class LabelRecommendedThresholds(RecommendedThresholds):
    label: str


class ConfusionMatrix(ApiModel):
    """Rows are the true label, columns the predicted one; the last of each is "background":
    its row counts false alarms, its column missed boxes."""

    labels: list[str] = Field(description='The label names, then "background".')
    counts: list[list[int]]
    row_normalized: list[list[float]] = Field(description="Each row divided by its sum.")


class ThresholdResult(ApiModel):
    evaluation: str = Field(description="models/{modelId}/evaluations/{evaluationId}")
    confidence_threshold: float
    iou_threshold: float = Field(
        description="The stored IoU threshold used: the one nearest to the requested value."
    )
    overall: PointCounts = Field(description="All labels pooled, or the one label asked for.")
    per_label: list[LabelPointCounts]
    recommended: RecommendedThresholds = Field(description="All labels pooled (or the label).")
    recommended_per_label: list[LabelRecommendedThresholds]
    confusion_matrix: ConfusionMatrix


# -- per-image results -------------------------------------------------------------------


DetectionOutcome = Literal["TRUE_POSITIVE", "FALSE_POSITIVE", "CONFUSION"]
TruthOutcome = Literal["FOUND", "CONFUSED", "MISSED"]


class EvaluatedDetection(ApiModel):
    label: str
    score: float
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    outcome: DetectionOutcome = Field(
        description="CONFUSION: it lies on a missed box of another label."
    )
    ground_truth_index: int | None = Field(
        default=None, description="The groundTruth entry it found (or was confused with)."
    )


class EvaluatedTruth(ApiModel):
    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    outcome: TruthOutcome


class ImageResult(ApiModel):
    image_id: str = Field(description="The dataset image: GET /v1/datasets/{id}/images/{imageId}")
    width: int
    height: int
    error_count: int = Field(description="False positives + confusions + false negatives.")
    true_positive_count: int
    false_positive_count: int
    confusion_count: int
    false_negative_count: int
    detections: list[EvaluatedDetection] = Field(description="Kept at this point; boxes relative.")
    ground_truth: list[EvaluatedTruth]


class ImageResultList(ApiModel):
    confidence_threshold: float
    iou_threshold: float
    image_results: list[ImageResult]
    total_size: int = Field(description="Images matching the query, over all pages.")
    next_page_token: str | None = None


# -- comparing two evaluations -----------------------------------------------------------


class SideFigures(ApiModel):
    ap: float | None = Field(default=None, description="COCO AP@[.5:.95]; null if undefined.")
    ap50: float | None = None
    ap75: float | None = None
    at_threshold: PointCounts


class FigureDeltas(ApiModel):
    """Candidate minus base."""

    ap: float | None = None
    ap50: float | None = None
    ap75: float | None = None
    precision: float
    recall: float
    f1_score: float


class LabelComparison(ApiModel):
    label: str = Field(description='"" for all labels together.')
    base: SideFigures
    candidate: SideFigures
    delta: FigureDeltas


class EvaluationComparison(ApiModel):
    base: str = Field(description="models/{modelId}/evaluations/{evaluationId}")
    candidate: str
    confidence_threshold: float
    iou_threshold: float
    overall: LabelComparison
    per_label: list[LabelComparison]

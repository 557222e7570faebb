"""Models and their evaluations on the wire (camelCase; metrics in Vertex AI's shape)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.db.dataset_image import Split
from app.kit.schemas import ApiModel


class ModelVersionRead(ApiModel):
    version: int
    training_job_id: str | None = None
    sha256: str = Field(description="SHA-256 of the PyTorch model file.")
    size_bytes: int
    create_time: datetime


class ModelRead(ApiModel):
    id: str
    name: str = Field(description="models/{id}")
    display_name: str
    labels: list[str] = Field(description="Label names; a label's position is its class id.")
    model_type: str
    input_size: int = Field(description="Side of the square input image, in pixels.")
    training_job_id: str | None = None
    latest_version: int
    versions: list[ModelVersionRead] = Field(description="Oldest first; files never change.")
    create_time: datetime
    update_time: datetime


class ModelList(ApiModel):
    models: list[ModelRead]
    next_page_token: str | None = None


# -- evaluations -------------------------------------------------------------------------


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
    format: Literal["pytorch", "onnx", "tflite", "tflite-int8"]
    sha256: str


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

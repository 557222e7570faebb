"""Online prediction on the wire: Vertex AI's object-detection JSON (DESIGN.md §3.5)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from app.kit.schemas import ApiModel

# Vertex's defaults and ceiling for image object detection.
DEFAULT_CONFIDENCE_THRESHOLD = 0.0
DEFAULT_MAX_PREDICTIONS = 10
MAX_PREDICTIONS = 500


class PredictInstance(ApiModel):
    content: str = Field(description="The image, base64-encoded (JPEG, PNG, WebP, ...).")
    mime_type: str | None = Field(default=None, description="Informative; the bytes decide.")


class PredictParameters(ApiModel):
    confidence_threshold: float = Field(default=DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    max_predictions: int = Field(
        default=DEFAULT_MAX_PREDICTIONS,
        ge=1,
        le=MAX_PREDICTIONS,
        description="At most 500, as Vertex; the model itself keeps at most 100 per image.",
    )


class PredictRequest(ApiModel):
    instances: list[PredictInstance] = Field(min_length=1)
    parameters: PredictParameters = Field(default_factory=PredictParameters)


class Prediction(ApiModel):
    """Parallel arrays, highest confidence first; boxes relative, ``[xMin, xMax, yMin, yMax]``."""

    ids: list[str] = Field(description="Label indices (the model's label order), as strings.")
    display_names: list[str]
    confidences: list[float]
    bboxes: list[list[float]]


class PredictResponse(ApiModel):
    predictions: list[Prediction]
    deployed_model_id: str
    model_version: int


class DeploymentRead(ApiModel):
    model_id: str
    model_version: int
    artifact_sha256: str = Field(description="The ONNX file served.")
    deployed_model_id: str
    create_time: datetime


class DeployRequest(ApiModel):
    model_version: int | None = Field(default=None, ge=1, description="Default: the latest.")

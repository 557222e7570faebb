"""Models and their versions on the wire (camelCase)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.kit.schemas import ApiModel

ExportFormat = Literal["onnx", "tflite", "tflite-int8"]


class ArtifactRead(ApiModel):
    format: ExportFormat
    sha256: str = Field(description="SHA-256 of the file: its ETag when downloaded.")
    size_bytes: int
    details: dict[str, Any] = Field(description="Opset, input, outputs, labels.")
    create_time: datetime


class ModelVersionRead(ApiModel):
    version: int
    training_job_id: str | None = None
    sha256: str = Field(description="SHA-256 of the PyTorch model file.")
    size_bytes: int
    artifacts: list[ArtifactRead] = Field(
        default_factory=list, description="Exported files (GET …/artifacts/{format})."
    )
    create_time: datetime


class ExportRequest(ApiModel):
    format: ExportFormat
    model_version: int | None = Field(default=None, ge=1, description="Default: the latest.")


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

"""Models and their versions on the wire (camelCase)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

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
    format: Literal["pytorch", "tflite"] = Field(
        description="The version's own file: PyTorch weights trained here, or an uploaded TFLite."
    )
    sha256: str = Field(description="SHA-256 of the version's own file.")
    size_bytes: int
    artifacts: list[ArtifactRead] = Field(
        default_factory=list, description="Exported files (GET …/artifacts/{format})."
    )
    create_time: datetime


class ExportRequest(ApiModel):
    format: ExportFormat
    model_version: int | None = Field(default=None, ge=1, description="Default: the latest.")


# Firebase ML's rule for display names and tags.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,60}$"
MAX_TAGS = 20


class ValidationErrorRead(ApiModel):
    code: int = Field(description="google.rpc.Code: 3 (INVALID_ARGUMENT) for a rejected file.")
    message: str


class ModelState(ApiModel):
    published: bool
    validation_error: ValidationErrorRead | None = Field(
        default=None, description="Why an uploaded file cannot be published."
    )


class OperationRef(ApiModel):
    name: str = Field(description="operations/{id}")


class MirrorErrorRead(ApiModel):
    code: int = Field(description="google.rpc.Code, e.g. 7 (PERMISSION_DENIED).")
    status: str = Field(description="Its canonical name.")
    message: str


class FirebaseMirrorRead(ApiModel):
    """Where the model's mirror in Firebase ML stands (only with the mirror configured)."""

    state: Literal["PENDING", "SYNCED", "FAILED"] = Field(
        description="PENDING: a mirror job is queued or retrying (error: its last failure); "
        "SYNCED: Firebase ML matched the model when it finished; FAILED: it gave up (error "
        "says why; publishing again tries again)."
    )
    firebase_model: str | None = Field(
        default=None, description="projects/{project}/models/{id} in Firebase ML, once made."
    )
    model_version: int | None = Field(
        default=None, description="The version whose file Firebase ML holds."
    )
    model_hash: str | None = Field(default=None, description="Firebase ML's hash of that file.")
    published: bool = Field(description="Whether it is published in Firebase ML.")
    error: MirrorErrorRead | None = None
    attempts: int = Field(description="Tries of the last mirror job so far.")
    update_time: datetime


class ModelRead(ApiModel):
    id: str
    name: str = Field(description="models/{id}")
    display_name: str
    tags: list[str] = Field(default_factory=list)
    state: ModelState
    published_version: int | None = Field(
        default=None, description="The version apps download (the heaviest of a split)."
    )
    traffic_split: dict[str, int] | None = Field(
        default=None,
        description='Published versions and their weights in percent, e.g. {"3": 80, "4": 20}.',
    )
    model_hash: str | None = Field(
        default=None,
        description="SHA-256 of the TFLite file apps download: the published version's, "
        "else the latest version's once exported.",
    )
    etag: str = Field(description="Send it back in If-Match to update only what you read.")
    active_operations: list[OperationRef] = Field(
        default_factory=list, description="Unfinished operations; the model is locked meanwhile."
    )
    source: Literal["training", "upload", "vertex"] = Field(
        description="training: trained here; upload: a .tflite file brought by a user; vertex: "
        "trained by Vertex AI AutoML (its TFLite export)."
    )
    labels: list[str] = Field(description="Label names; a label's position is its class id.")
    model_type: str
    input_size: int = Field(description="Side of the square input image, in pixels.")
    training_job_id: str | None = None
    latest_version: int
    versions: list[ModelVersionRead] = Field(description="Oldest first; files never change.")
    firebase_mirror: FirebaseMirrorRead | None = Field(
        default=None,
        description="Read-only: the model's mirror in Firebase ML; null when never mirrored.",
    )
    create_time: datetime
    update_time: datetime


class TfliteSource(ApiModel):
    gcs_tflite_uri: str = Field(
        description="Where the .tflite file is: gs://bucket/path (or a path/https URI the "
        "operator allows, as for imports)."
    )


class ModelCreate(ApiModel):
    """A model from a user's .tflite detector (JSON form; multipart sends the file itself)."""

    display_name: str = Field(pattern=NAME_PATTERN)
    tags: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    tflite_model: TfliteSource


class VersionCreate(ApiModel):
    tflite_model: TfliteSource
    etag: str | None = Field(default=None, description="As If-Match.")


class ModelUpdate(ApiModel):
    """The fields ``updateMask`` may name; the others are ignored."""

    display_name: str | None = Field(default=None, pattern=NAME_PATTERN)
    tags: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = Field(
        default=None, max_length=MAX_TAGS
    )
    etag: str | None = Field(default=None, description="As If-Match.")


class PublishRequest(ApiModel):
    model_version: int | None = Field(
        default=None, ge=1, description="Default: the latest version."
    )
    traffic_split: dict[str, int] | None = Field(
        default=None,
        description="Versions and weights in percent summing to 100, for an A/B test; "
        "instead of modelVersion.",
    )
    etag: str | None = Field(default=None, description="As If-Match.")


class UnpublishRequest(ApiModel):
    etag: str | None = Field(default=None, description="As If-Match.")


class ModelList(ApiModel):
    models: list[ModelRead]
    next_page_token: str | None = None

"""Firebase ML's v1beta2 wire shapes, as the firebase-admin SDKs send and parse them.

Answers follow Google's proto3 JSON: a field at its default (``published`` false, no tags, no
validation error, no operations) is left out, int64 is a string, and times are UTC with
microseconds and ``Z`` (the SDK parses ``%Y-%m-%dT%H:%M:%S.%fZ`` and nothing else). Request
bodies ignore the output-only fields the SDK sends back (``name``, ``etag``, ``createTime``...).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from app.kit.schemas import ApiModel
from app.registry.schemas import MAX_TAGS, NAME_PATTERN

MODEL_TYPE = "type.googleapis.com/google.firebase.ml.v1beta2.Model"
OPERATION_METADATA_TYPE = "type.googleapis.com/google.firebase.ml.v1beta2.ModelOperationMetadata"
# Google's rule for project ids (and the SDK's for the project in a resource name); project
# numbers, all digits, fit it too.
PROJECT_PATTERN = r"^[a-z0-9-]{6,30}$"


def timestamp(moment: datetime) -> str:
    """``2026-11-26T12:00:00.123456Z``: always six digits, which the SDK's parser needs."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FirebaseValidationError(ApiModel):
    code: int = Field(description="google.rpc.Code: 3 (INVALID_ARGUMENT) for a rejected file.")
    message: str


class FirebaseModelState(ApiModel):
    published: bool | None = Field(default=None, description="Left out while unpublished.")
    validation_error: FirebaseValidationError | None = Field(
        default=None, description="Why the model's file cannot be published; left out if none."
    )


class FirebaseTfliteModel(ApiModel):
    gcs_tflite_uri: str | None = Field(
        default=None,
        description="The file shown (the published version's, else the latest's) in this "
        "service's bucket; left out when the blob store is not Cloud Storage.",
    )
    size_bytes: str = Field(description="The file's size (int64, as a string).")


class FirebaseOperationRef(ApiModel):
    name: str = Field(description="projects/{project}/operations/{operationId}")


class FirebaseModel(ApiModel):
    name: str = Field(description="projects/{project}/models/{modelId}")
    display_name: str
    tags: list[str] | None = Field(default=None, description="Left out when there are none.")
    state: FirebaseModelState
    tflite_model: FirebaseTfliteModel | None = Field(
        default=None, description="Left out while the model has no TFLite file."
    )
    model_hash: str | None = Field(default=None, description="SHA-256 of the TFLite file.")
    etag: str
    create_time: str = Field(description="UTC, e.g. 2026-11-26T12:00:00.123456Z")
    update_time: str
    active_operations: list[FirebaseOperationRef] | None = Field(
        default=None, description="Unfinished operations (the model is locked); left out if none."
    )


class FirebaseModelResponse(FirebaseModel):
    """A model inside an operation's ``response``, typed as Google's Any is."""

    type: str = Field(default=MODEL_TYPE, alias="@type")


class FirebaseOperationMetadata(ApiModel):
    type: str = Field(default=OPERATION_METADATA_TYPE, alias="@type")
    name: str = Field(description="The model the operation changes.")


class FirebaseStatus(ApiModel):
    code: int = Field(description="google.rpc.Code number.")
    message: str
    details: list[dict[str, Any]] | None = None


class FirebaseOperation(ApiModel):
    name: str | None = Field(
        default=None, description="Left out when the operation is done at once."
    )
    metadata: FirebaseOperationMetadata | None = None
    done: bool
    response: FirebaseModelResponse | None = None
    error: FirebaseStatus | None = None


class FirebaseModelList(ApiModel):
    models: list[FirebaseModel]
    next_page_token: str | None = Field(default=None, description="Left out on the last page.")


class FirebaseEmpty(ApiModel):
    """google.protobuf.Empty: ``{}``."""


# -- requests ------------------------------------------------------------------------------

Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Request(ApiModel):
    # The SDK sends a model back as it read it, output-only fields included.
    model_config = ConfigDict(extra="ignore")


class FirebaseTfliteSource(_Request):
    gcs_tflite_uri: str | None = Field(
        default=None,
        description="gs://bucket/object, or a Cloud Storage URL of one (the SDK sends a V4 "
        "signed URL); this service reads it with its own Cloud Storage access.",
    )
    automl_model: str | None = Field(
        default=None, description="Not supported: export the AutoML model's .tflite instead."
    )


class FirebaseStateUpdate(_Request):
    published: bool | None = None


class FirebaseModelCreate(_Request):
    display_name: Name
    tags: list[Name] = Field(default_factory=list, max_length=MAX_TAGS)
    tflite_model: FirebaseTfliteSource | None = None


class FirebaseModelPatch(_Request):
    display_name: Name | None = None
    tags: list[Name] | None = Field(default=None, max_length=MAX_TAGS)
    state: FirebaseStateUpdate | None = None
    tflite_model: FirebaseTfliteSource | None = None

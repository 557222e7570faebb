"""Datasets, images and boxes on the wire (camelCase, Google style)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.db.dataset_image import Split
from app.kit.schemas import ApiModel


class DatasetCreate(ApiModel):
    display_name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)


class DatasetUpdate(ApiModel):
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)


class DatasetRead(ApiModel):
    id: str
    name: str = Field(description="datasets/{id}")
    display_name: str
    description: str
    image_count: int
    labeled_image_count: int
    box_count: int
    labels: list[str]
    create_time: datetime
    update_time: datetime


class DatasetList(ApiModel):
    datasets: list[DatasetRead]
    next_page_token: str | None = None


class BoxIn(ApiModel):
    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


class BoxRead(BoxIn):
    pass


class ImageRead(ApiModel):
    id: str
    name: str = Field(description="datasets/{datasetId}/images/{id}")
    dataset_id: str
    split: Split
    labeled: bool = Field(
        description="False until someone labels it; true with no boxes is a negative."
    )
    width: int
    height: int
    format: str
    mime_type: str
    size_bytes: int
    sha256: str
    source_uri: str
    box_count: int
    boxes: list[BoxRead] | None = Field(default=None, description="Present when reading one image.")
    create_time: datetime
    update_time: datetime


class ImageList(ApiModel):
    images: list[ImageRead]
    next_page_token: str | None = None


class ImageUpdate(ApiModel):
    split: Split | None = None


class AnnotationsReplace(ApiModel):
    boxes: list[BoxIn] = Field(
        description="The image's complete set of boxes; an empty list marks a reviewed negative."
    )


class UploadError(ApiModel):
    file: str
    message: str


class UploadResult(ApiModel):
    images: list[ImageRead]
    errors: list[UploadError]


class ImportUris(ApiModel):
    uris: list[str] = Field(min_length=1, max_length=100)
    strict: bool = False


class RowErrorRead(ApiModel):
    row: int
    field: str
    message: str


class ImportResult(ApiModel):
    """The response of a finished import operation."""

    rows_read: int
    imported_image_count: int
    new_image_count: int
    duplicate_uri_count: int = Field(
        description="URIs whose bytes equal an image already named: stored once, boxes merged."
    )
    unlabeled_image_count: int
    imported_box_count: int
    error_count: int
    errors: list[RowErrorRead]
    errors_truncated: bool


class SplitCounts(ApiModel):
    train: int = 0
    validation: int = 0
    test: int = 0


class LabelStats(ApiModel):
    label: str
    images: SplitCounts
    boxes: SplitCounts


class ReadinessWarning(ApiModel):
    code: Literal[
        "FEW_IMAGES",
        "LABEL_IMBALANCE",
        "SMALL_BOXES",
        "SPLIT_WITHOUT_LABEL",
        "NO_TRAIN_IMAGES",
        "TOO_MANY_LABELS",
    ]
    label: str | None = None
    message: str


class DatasetStats(ApiModel):
    image_count: int
    labeled_image_count: int
    unlabeled_image_count: int
    negative_image_count: int = Field(description="Labelled images with no boxes.")
    box_count: int
    images_by_split: SplitCounts
    labels: list[LabelStats]
    box_area_quantiles: dict[str, float] = Field(
        description="Box area over image area at quantiles q0, q10, q25, q50, q75, q90, q100."
    )
    warnings: list[ReadinessWarning]
    trainable: bool

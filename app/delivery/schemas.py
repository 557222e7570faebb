"""The download answer on the wire, in Firebase ML's shape."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.kit.schemas import ApiModel


class ModelDownload(ApiModel):
    """Firebase ML's ``ModelDownloadInfo``, plus which file and version it is."""

    download_uri: str = Field(
        description="Where to GET the TFLite file until expireTime: a signed Cloud Storage URL, "
        "or a link this service signs (/v1/downloads/{token}); it needs no API key."
    )
    expire_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When downloadUri stops working: RFC 3339 UTC with milliseconds "
        "(2026-01-02T03:04:05.000Z), the form Firebase's Android downloader parses.",
    )
    size_bytes: str = Field(
        pattern=r"^[0-9]+$",
        description="The file's size: an int64 written as a decimal string, as Firebase sends it.",
    )
    model_format: Literal["TFLITE"] = "TFLITE"
    model_hash: str = Field(
        description="SHA-256 of the file (hex); also the ETag, and what an app sends back in "
        "If-None-Match."
    )
    model_version: int = Field(
        description="The version served: the published one, or this installation's side of an "
        "A/B split."
    )

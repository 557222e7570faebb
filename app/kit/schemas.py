"""Base Pydantic models for the HTTP surface: camelCase JSON, Google's error body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Every request and response body: snake_case in Python, camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ErrorStatus(ApiModel):
    code: int = Field(description="The HTTP status code.")
    status: str = Field(description="The canonical Google status name, e.g. NOT_FOUND.")
    message: str
    details: list[dict[str, Any]] = Field(description="Typed details, e.g. google.rpc.BadRequest.")


class ErrorBody(ApiModel):
    """Google's error shape, which its client libraries parse."""

    error: ErrorStatus

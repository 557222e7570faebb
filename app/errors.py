"""The typed error hierarchy every layer raises; one handler renders it in Google's shape.

Services and repositories raise these, never ``HTTPException``. Each class carries the HTTP
status and the canonical Google status name, so the JSON body is the one Google's client
libraries parse: ``{"error": {"code", "status", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError


class AppError(Exception):
    """Base of every error the service reports to a caller on purpose."""

    status_code: ClassVar[int] = 500
    status: ClassVar[str] = "INTERNAL"
    # google.rpc.Code number, used where an error is stored on an operation (Vertex does the same).
    rpc_code: ClassVar[int] = 13

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status_code,
                "status": self.status,
                "message": self.message,
                "details": self.details,
            }
        }

    def to_rpc_status(self) -> dict[str, Any]:
        """The google.rpc.Status form stored on a failed operation."""
        status: dict[str, Any] = {
            "code": self.rpc_code,
            "status": self.status,
            "message": self.message,
        }
        if self.details:
            status["details"] = self.details
        return status


class InvalidInput(AppError):
    status_code = 400
    status = "INVALID_ARGUMENT"
    rpc_code = 3

    @classmethod
    def field(cls, field: str, description: str) -> InvalidInput:
        """An error about one named request field, with Google's BadRequest detail."""
        return cls(
            f"{field}: {description}",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": field, "description": description}],
                }
            ],
        )

    @classmethod
    def of_validation(cls, exc: ValidationError) -> InvalidInput:
        """The first problem of a body validated by hand (routes that take several types)."""
        first = exc.errors()[0]
        return cls.field(".".join(str(p) for p in first["loc"]) or "body", first["msg"])


class FailedPrecondition(AppError):
    status_code = 400
    status = "FAILED_PRECONDITION"
    rpc_code = 9


class Unauthenticated(AppError):
    status_code = 401
    status = "UNAUTHENTICATED"
    rpc_code = 16


class PermissionDenied(AppError):
    status_code = 403
    status = "PERMISSION_DENIED"
    rpc_code = 7


class NotFound(AppError):
    status_code = 404
    status = "NOT_FOUND"
    rpc_code = 5


class Conflict(AppError):
    status_code = 409
    status = "ABORTED"
    rpc_code = 10


class AlreadyExists(Conflict):
    status = "ALREADY_EXISTS"
    rpc_code = 6


class PreconditionFailed(AppError):
    """An ``If-Match`` (or body ``etag``) that names an older state of the resource."""

    status_code = 412
    status = "FAILED_PRECONDITION"
    rpc_code = 9


class PayloadTooLarge(AppError):
    status_code = 413
    status = "OUT_OF_RANGE"
    rpc_code = 11


class ResourceExhausted(AppError):
    """Too much work queued; the caller should retry later (Google's 429)."""

    status_code = 429
    status = "RESOURCE_EXHAUSTED"
    rpc_code = 8


class Unavailable(AppError):
    status_code = 503
    status = "UNAVAILABLE"
    rpc_code = 14


def error_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry a route declares so the OpenAPI document lists its errors."""
    from app.kit.schemas import ErrorBody  # local: errors must stay importable without pydantic

    responses: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        entry = responses.setdefault(
            error.status_code, {"model": ErrorBody, "description": error.status}
        )
        if error.status not in entry["description"].split(" | "):
            entry["description"] += f" | {error.status}"
    return responses

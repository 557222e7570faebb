"""Shape the generated OpenAPI document into the contract we keep.

FastAPI documents a 422 ``HTTPValidationError`` that this service never sends: validation
errors are rendered as Google's 400 INVALID_ARGUMENT. The document is rewritten to say so,
and every operation also documents the 500 that a bug produces, in the same shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_ERROR_CONTENT = {"application/json": {"schema": ERROR_REF}}


def operation_id(route: APIRoute) -> str:
    """The route function's name: readable in generated clients, and unique (tested)."""
    return route.name


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A body's JSON schema (camelCase) with its ``$defs`` references replaced by the
    definitions, for a route that documents its body by hand (JSON or multipart): the
    document's components do not hold them, and generated clients must resolve every ref."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _rewrite_error_responses(document)
            _binary_as_format(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _binary_as_format(node: Any) -> None:
    """Uploads in the OpenAPI 3.0 spelling (``format: binary``) as well as 3.1's
    ``contentMediaType``, so client generators that know only one make a file field."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            node.setdefault("format", "binary")
        for value in node.values():
            _binary_as_format(value)
    elif isinstance(node, list):
        for value in node:
            _binary_as_format(value)


def _rewrite_error_responses(document: dict[str, Any]) -> None:
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400", {"description": "INVALID_ARGUMENT", "content": _ERROR_CONTENT}
                )
            responses.setdefault("500", {"description": "INTERNAL", "content": _ERROR_CONTENT})
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)

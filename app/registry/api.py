"""Model registry routes: models, their versions, exports and the exported files."""

from __future__ import annotations

from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from app.auth.dependencies import require
from app.auth.service import Scope
from app.db.model import Model
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    error_responses,
)
from app.jobs.schemas import OperationRead
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.registry import service
from app.registry.schemas import (
    ArtifactRead,
    ExportFormat,
    ExportRequest,
    ModelList,
    ModelRead,
    ModelVersionRead,
)
from app.web.deps import BlobsDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["models"])

ModelId = Annotated[str, Path(alias="modelId")]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]


def _model_read(
    model: Model, versions: list[ModelVersion], artifacts: list[ModelArtifact]
) -> ModelRead:
    return ModelRead(
        id=model.id,
        name=f"models/{model.id}",
        display_name=model.display_name,
        labels=list(model.labels),
        model_type=model.model_type,
        input_size=model.input_size,
        training_job_id=model.training_job_id,
        latest_version=max((v.version for v in versions), default=0),
        versions=[
            ModelVersionRead(
                version=v.version,
                training_job_id=v.training_job_id,
                sha256=v.weights_sha256,
                size_bytes=v.weights_size_bytes,
                artifacts=[
                    ArtifactRead(
                        format=cast(ExportFormat, a.format),
                        sha256=a.sha256,
                        size_bytes=a.size_bytes,
                        details=a.details,
                        create_time=a.created_at,
                    )
                    for a in artifacts
                    if a.model_version == v.version
                ],
                create_time=v.created_at,
            )
            for v in versions
        ],
        create_time=model.created_at,
        update_time=model.updated_at,
    )


# -- custom methods first: "/models/{id}:export" must not match "/models/{id}" ------------


@router.post(
    "/models/{modelId}:export",
    response_model=OperationRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def export_model(model_id: ModelId, export_in: ExportRequest, session: SessionDep) -> OperationRead:
    """Export a model version to ONNX (TFLite to follow), as an operation."""
    return OperationRead.from_job(
        service.request_export(session, model_id=model_id, export_in=export_in)
    )


@router.get(
    "/models",
    response_model=ModelList,
    dependencies=READ,
    responses=error_responses(InvalidInput, *AUTH),
)
def list_models(
    session: SessionDep,
    settings: SettingsDep,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> ModelList:
    """List models, newest first."""
    size = check_page_size(page_size, default=settings.default_page_size)
    models, cursor = service.list_models(session, page_size=size, after=decode_token(page_token))
    versions = service.versions(session, models)
    artifacts = service.artifacts(session, models)
    return ModelList(
        models=[_model_read(m, versions[m.id], artifacts[m.id]) for m in models],
        next_page_token=encode_token(cursor) if cursor else None,
    )


@router.get(
    "/models/{modelId}",
    response_model=ModelRead,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_model(model_id: ModelId, session: SessionDep) -> ModelRead:
    """Get a model: its labels, type, input size and versions."""
    model = service.get(session, model_id=model_id)
    return _model_read(
        model,
        service.versions(session, [model])[model.id],
        service.artifacts(session, [model])[model.id],
    )


@router.get(
    "/models/{modelId}/artifacts/{format}",
    dependencies=READ,
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The file; its SHA-256 is the ETag.",
        },
        304: {"description": "If-None-Match named the current file."},
        **error_responses(InvalidInput, NotFound, *AUTH),
    },
)
def download_artifact(
    model_id: ModelId,
    format: Annotated[Literal["pytorch", "onnx", "tflite", "tflite-int8"], Path()],
    session: SessionDep,
    blobs: BlobsDep,
    model_version: Annotated[
        int | None, Query(alias="modelVersion", ge=1, description="Default: the latest.")
    ] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Download a model version's file in a format, with its SHA-256 as ETag."""
    found = service.download(session, model_id=model_id, version=model_version, format=format)
    etag = f'"{found.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=0, must-revalidate"}
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{found.filename}"'
    return Response(blobs.get(found.key), media_type="application/octet-stream", headers=headers)

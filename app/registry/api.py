"""Model registry routes: models, their versions, exports and the exported files."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.auth.dependencies import require
from app.auth.service import Scope
from app.config import Settings
from app.datasets.sources import FetchPolicy
from app.db.job import Job
from app.db.model import Model
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    PreconditionFailed,
    Unauthenticated,
    error_responses,
)
from app.jobs.schemas import OperationRead
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.registry import filters, mirror, service
from app.registry.schemas import (
    ArtifactRead,
    ExportFormat,
    ExportRequest,
    FirebaseMirrorRead,
    ModelCreate,
    ModelList,
    ModelRead,
    ModelState,
    ModelUpdate,
    ModelVersionRead,
    OperationRef,
    PublishRequest,
    UnpublishRequest,
    ValidationErrorRead,
    VersionCreate,
)
from app.web.deps import BlobsDep, SessionDep, SettingsDep
from app.web.openapi import inlined_schema

router = APIRouter(prefix="/v1", tags=["models"])
UploadT = TypeVar("UploadT", ModelCreate, VersionCreate)

ModelId = Annotated[str, Path(alias="modelId")]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]


IfMatch = Annotated[str | None, Header(description="The etag read; a stale one answers 412.")]


def _model_read(
    model: Model,
    versions: list[ModelVersion],
    artifacts: list[ModelArtifact],
    tags: list[str],
    operations: list[Job],
) -> ModelRead:
    published = service.main_published_version(model)
    shown = service.shown_version(model, versions)
    tflite = next(
        (a for a in artifacts if a.model_version == shown and a.format == service.TFLITE), None
    )
    error = model.validation_error
    return ModelRead(
        id=model.id,
        name=f"models/{model.id}",
        display_name=model.display_name,
        tags=tags,
        state=ModelState(
            published=model.published_split is not None,
            validation_error=ValidationErrorRead(**error) if error else None,
        ),
        published_version=published,
        traffic_split=dict(model.published_split) if model.published_split else None,
        model_hash=tflite.sha256 if tflite else None,
        etag=service.etag_of(model),
        active_operations=[OperationRef(name=f"operations/{job.id}") for job in operations],
        source=cast(Literal["training", "upload", "vertex"], model.source),
        labels=list(model.labels),
        model_type=model.model_type,
        input_size=model.input_size,
        training_job_id=model.training_job_id,
        latest_version=max((v.version for v in versions), default=0),
        versions=[
            ModelVersionRead(
                version=v.version,
                training_job_id=v.training_job_id,
                format=cast(Literal["pytorch", "tflite"], v.format),
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
        firebase_mirror=(
            FirebaseMirrorRead.model_validate(model.firebase_mirror)
            if model.firebase_mirror
            else None
        ),
        create_time=model.created_at,
        update_time=model.updated_at,
    )


def read_models(session: Session, models: list[Model]) -> list[ModelRead]:
    """Models as the API shows them, with their versions, files, tags and operations."""
    versions = service.versions(session, models)
    artifacts = service.artifacts(session, models)
    tags = service.tags(session, models)
    operations = service.active_operations(session, models)
    return [
        _model_read(m, versions[m.id], artifacts[m.id], tags[m.id], operations[m.id])
        for m in models
    ]


def _with_etag(model: ModelRead, response: Response) -> ModelRead:
    response.headers["ETag"] = f'"{model.etag}"'
    return model


_UPLOAD_FORM = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The .tflite file."},
        "displayName": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "etag": {"type": "string"},
    },
}


async def _tflite_upload(
    request: Request, settings: Settings, schema: type[UploadT]
) -> tuple[UploadT, bytes]:
    """The request's fields and .tflite bytes: JSON naming the file (tfliteModel.gcsTfliteUri)
    or multipart with the file in field "file"."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, StarletteUploadFile):
            raise InvalidInput.field("file", "a multipart field 'file' with the .tflite file")
        fields: dict[str, Any] = {
            name: form.get(name) for name in ("displayName", "etag") if name in form
        }
        if "tags" in form:  # repeated fields, or one comma-separated field
            fields["tags"] = [t for v in form.getlist("tags") for t in str(v).split(",") if t]
        fields["tfliteModel"] = {"gcsTfliteUri": f"upload:{upload.filename}"}
        data = await upload.read(settings.max_tflite_bytes + 1)
        try:
            return schema.model_validate(fields), data
        except ValidationError as exc:
            raise InvalidInput.of_validation(exc) from None
    if content_type != "application/json":
        raise InvalidInput(
            'send JSON {"displayName", "tags", "tfliteModel": {"gcsTfliteUri": "gs://..."}} '
            "or the file as multipart/form-data (field 'file')"
        )
    try:
        body = schema.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidInput.of_validation(exc) from None
    data = await run_in_threadpool(
        service.fetch_tflite,
        body.tflite_model.gcs_tflite_uri,
        policy=FetchPolicy.of(settings),
        max_bytes=settings.max_tflite_bytes,
    )
    return body, data


@router.post(
    "/models",
    response_model=ModelRead,
    status_code=201,
    dependencies=WRITE,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": inlined_schema(ModelCreate)},
                "multipart/form-data": {"schema": _UPLOAD_FORM},
            }
        }
    },
    responses=error_responses(InvalidInput, PayloadTooLarge, *AUTH),
)
async def create_model(
    request: Request, session: SessionDep, blobs: BlobsDep, settings: SettingsDep
) -> ModelRead:
    """Register a .tflite detector you already have (AutoML's, say); a file that fails the
    checks makes a model with state.validationError saying why."""
    create_in, data = await _tflite_upload(request, settings, ModelCreate)
    model = await run_in_threadpool(
        service.create_uploaded,
        session,
        blobs,
        display_name=create_in.display_name,
        tags=create_in.tags,
        data=data,
        max_bytes=settings.max_tflite_bytes,
    )
    return read_models(session, [model])[0]


@router.post(
    "/models/{modelId}/versions",
    response_model=ModelRead,
    status_code=201,
    dependencies=WRITE,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": inlined_schema(VersionCreate)},
                "multipart/form-data": {"schema": _UPLOAD_FORM},
            }
        }
    },
    responses=error_responses(
        InvalidInput,
        NotFound,
        FailedPrecondition,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        *AUTH,
    ),
)
async def create_version(
    model_id: ModelId,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    if_match: IfMatch = None,
) -> ModelRead:
    """Add a version to an uploaded model from another .tflite file."""
    version_in, data = await _tflite_upload(request, settings, VersionCreate)
    await run_in_threadpool(
        service.add_uploaded_version,
        session,
        blobs,
        model_id=model_id,
        data=data,
        max_bytes=settings.max_tflite_bytes,
        if_match=if_match or version_in.etag,
    )
    return read_models(session, [service.get(session, model_id=model_id)])[0]


# -- custom methods first: "/models/{id}:export" must not match "/models/{id}" ------------


@router.post(
    "/models/{modelId}:publish",
    response_model=ModelRead,
    dependencies=WRITE,
    responses=error_responses(
        InvalidInput,
        NotFound,
        FailedPrecondition,
        Conflict,
        AlreadyExists,
        PreconditionFailed,
        *AUTH,
    ),
)
def publish_model(
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    publish_in: PublishRequest | None = None,
    if_match: IfMatch = None,
) -> ModelRead:
    """Publish a version for apps to download (default the latest), or an A/B split."""
    model = service.publish(
        session, model_id=model_id, publish_in=publish_in or PublishRequest(), if_match=if_match
    )
    mirror.request_sync(session, model_id=model_id, settings=settings)
    return _with_etag(read_models(session, [model])[0], response)


@router.post(
    "/models/{modelId}:unpublish",
    response_model=ModelRead,
    dependencies=WRITE,
    responses=error_responses(NotFound, Conflict, PreconditionFailed, *AUTH),
)
def unpublish_model(
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    unpublish_in: UnpublishRequest | None = None,
    if_match: IfMatch = None,
) -> ModelRead:
    """Stop serving the model to apps; its versions and files stay."""
    etag = if_match or (unpublish_in.etag if unpublish_in else None)
    model = service.unpublish(session, model_id=model_id, if_match=etag)
    mirror.request_sync(session, model_id=model_id, settings=settings)
    return _with_etag(read_models(session, [model])[0], response)


@router.post(
    "/models/{modelId}:export",
    response_model=OperationRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def export_model(model_id: ModelId, export_in: ExportRequest, session: SessionDep) -> OperationRead:
    """Export a model version to ONNX, TFLite or full-integer TFLite, as an operation."""
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
    filter: Annotated[
        str | None,
        Query(
            description="Firebase ML's grammar: display_name = x, display_name : prefix*, "
            "tags: a AND tags: b, state.published = true"
        ),
    ] = None,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> ModelList:
    """List models, newest first, optionally filtered."""
    size = check_page_size(page_size, default=settings.default_page_size)
    parsed = filters.parse_filter(filter)
    models, cursor = service.list_models(
        session,
        page_size=size,
        after=decode_token(page_token, filter_key=filter or ""),
        where=filters.to_clause(parsed) if parsed is not None else None,
    )
    return ModelList(
        models=read_models(session, list(models)),
        next_page_token=encode_token(cursor, filter_key=filter or "") if cursor else None,
    )


@router.get(
    "/models/{modelId}",
    response_model=ModelRead,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_model(model_id: ModelId, session: SessionDep, response: Response) -> ModelRead:
    """Get a model: its labels, type, versions, tags and publishing state (ETag: its etag)."""
    model = service.get(session, model_id=model_id)
    return _with_etag(read_models(session, [model])[0], response)


@router.patch(
    "/models/{modelId}",
    response_model=ModelRead,
    dependencies=WRITE,
    responses=error_responses(
        InvalidInput, NotFound, Conflict, AlreadyExists, PreconditionFailed, *AUTH
    ),
)
def update_model(
    model_id: ModelId,
    update_in: ModelUpdate,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    update_mask: Annotated[
        str | None,
        Query(alias="updateMask", description="displayName, tags; default: the fields sent"),
    ] = None,
    if_match: IfMatch = None,
) -> ModelRead:
    """Rename a model or replace its tags."""
    model = service.update(
        session, model_id=model_id, update_in=update_in, update_mask=update_mask, if_match=if_match
    )
    if model.firebase_mirror is not None:  # a mirrored model keeps its name there too
        mirror.request_sync(session, model_id=model_id, settings=settings)
    return _with_etag(read_models(session, [model])[0], response)


@router.delete(
    "/models/{modelId}",
    status_code=204,
    response_class=Response,
    dependencies=WRITE,
    responses=error_responses(NotFound, Conflict, PreconditionFailed, *AUTH),
)
def delete_model(
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    force: Annotated[bool, Query(description="Delete even while published.")] = False,
    if_match: IfMatch = None,
) -> Response:
    """Delete a model, its versions and files (refused while published unless force)."""
    # First: the mirror job learns from the row which Firebase model to delete.
    mirror.request_sync(session, model_id=model_id, settings=settings)
    service.delete(session, model_id=model_id, force=force, if_match=if_match)
    return Response(status_code=204)


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

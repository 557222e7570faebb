"""Firebase ML's model-management API (v1beta2), so firebase-admin scripts move unchanged:
point the SDK's base URLs here and keep calling ``ml.create_model``, ``ml.list_models``...

Every project id maps to this installation's one registry: ``projects/p1/models/M`` and
``projects/p2/models/M`` are the same model, and names are answered in the project asked
about. Writes are done when answered, so operations come back with ``done: true``; the ones
still running are the model's ``activeOperations``, readable at ``projects/{p}/operations/{id}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from sqlalchemy.orm import Session

from app.auth.dependencies import require
from app.auth.service import Scope
from app.config import Settings
from app.datasets.sources import FetchPolicy
from app.db.job import Job, JobState
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
from app.jobs import service as jobs_service
from app.kit.blobs import BlobStore
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.registry import filters, mirror, service
from app.registry.firebase_schemas import (
    PROJECT_PATTERN,
    FirebaseEmpty,
    FirebaseModel,
    FirebaseModelCreate,
    FirebaseModelList,
    FirebaseModelPatch,
    FirebaseModelResponse,
    FirebaseModelState,
    FirebaseOperation,
    FirebaseOperationMetadata,
    FirebaseOperationRef,
    FirebaseStatus,
    FirebaseTfliteModel,
    FirebaseTfliteSource,
    FirebaseValidationError,
    timestamp,
)
from app.registry.schemas import ModelUpdate, PublishRequest
from app.web.deps import BlobsDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1beta2", tags=["firebase-ml"])

Project = Annotated[
    str,
    Path(
        pattern=PROJECT_PATTERN,
        description="Any project id: every project maps to this installation's registry.",
    ),
]
ModelId = Annotated[str, Path(alias="modelId")]
OperationId = Annotated[str, Path(alias="operationId")]
IfMatch = Annotated[
    str | None, Header(description="The etag read; a stale one answers 412 (an extension).")
]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]
SOURCE_FIELD = "tfliteModel.gcsTfliteUri"
# updateMask paths, in either spelling, and what each changes.
MASK_PATHS = {
    "displayName": "display_name",
    "display_name": "display_name",
    "tags": "tags",
    "state.published": "published",
    "tfliteModel": "file",
    "tflite_model": "file",
    "tfliteModel.gcsTfliteUri": "file",
    "tflite_model.gcs_tflite_uri": "file",
}


# -- the model as Firebase shows it --------------------------------------------------------


def _shown_file(
    model: Model, versions: list[ModelVersion], artifacts: list[ModelArtifact]
) -> service.VersionFile | None:
    """The TFLite file Firebase's one-file model stands for: the published version's (the
    heaviest of a split), else the latest version's; an upload that failed the checks is
    still its version's file."""
    shown = service.shown_version(model, versions)
    for artifact in artifacts:
        if artifact.model_version == shown and artifact.format == service.TFLITE:
            return service.VersionFile(
                service.TFLITE, artifact.blob_key, artifact.sha256, artifact.size_bytes
            )
    for version in versions:
        if version.version == shown and version.format == service.TFLITE:
            return service.VersionFile(
                service.TFLITE,
                version.weights_blob_key,
                version.weights_sha256,
                version.weights_size_bytes,
            )
    return None


def _gs_uri(blobs: BlobStore, file: service.VersionFile) -> str | None:
    # The SDK turns any other form into an error when it reads the model, so none is shown.
    uri = blobs.uri(file.key)
    return uri if uri.startswith("gs://") else None


def _model(
    project: str,
    model: Model,
    *,
    file: service.VersionFile | None,
    tags: list[str],
    operations: list[Job],
    blobs: BlobStore,
) -> FirebaseModel:
    error = model.validation_error
    return FirebaseModel(
        name=f"projects/{project}/models/{model.id}",
        display_name=model.display_name,
        tags=tags or None,
        state=FirebaseModelState(
            published=True if model.published_split is not None else None,
            validation_error=FirebaseValidationError(**error) if error else None,
        ),
        tflite_model=FirebaseTfliteModel(
            gcs_tflite_uri=_gs_uri(blobs, file), size_bytes=str(file.size_bytes)
        )
        if file
        else None,
        model_hash=file.sha256 if file else None,
        etag=service.etag_of(model),
        create_time=timestamp(model.created_at),
        update_time=timestamp(model.updated_at),
        active_operations=[
            FirebaseOperationRef(name=f"projects/{project}/operations/{job.id}")
            for job in operations
        ]
        or None,
    )


def _shown_files(
    session: Session, models: Sequence[Model]
) -> dict[str, service.VersionFile | None]:
    versions = service.versions(session, models)
    artifacts = service.artifacts(session, models)
    return {m.id: _shown_file(m, versions[m.id], artifacts[m.id]) for m in models}


def read_models(
    session: Session, blobs: BlobStore, project: str, models: Sequence[Model]
) -> list[FirebaseModel]:
    """Models in Firebase ML's shape, named in ``project``."""
    files = _shown_files(session, models)
    tags = service.tags(session, models)
    operations = service.active_operations(session, models)
    return [
        _model(
            project, m, file=files[m.id], tags=tags[m.id], operations=operations[m.id], blobs=blobs
        )
        for m in models
    ]


def _done(session: Session, blobs: BlobStore, project: str, model: Model) -> FirebaseOperation:
    """A write's answer: an operation already done, the model its response."""
    [read] = read_models(session, blobs, project, [model])
    return FirebaseOperation(
        done=True, response=FirebaseModelResponse.model_validate(read.model_dump())
    )


# -- the file a request names --------------------------------------------------------------


def _source_uri(source: FirebaseTfliteSource | None) -> str:
    """The ``gs://`` URI of the file: as given, or the bucket and object of a Cloud Storage
    URL (the SDK signs gs:// URIs before sending them). No other URL is read: this service
    opens the object with its own Cloud Storage access, never by fetching what it is sent."""
    if source is not None and source.automl_model:
        raise InvalidInput.field(
            "tfliteModel.automlModel",
            "AutoML model sources are not supported: export the model's .tflite file to "
            f"gs:// and give it as {SOURCE_FIELD}",
        )
    uri = source.gcs_tflite_uri if source is not None else None
    if not uri:
        raise InvalidInput.field(SOURCE_FIELD, "required: the gs:// URI of the .tflite file")
    if uri.startswith("gs://"):
        return uri
    if uri.startswith(("https://", "http://")):
        from app.kit.blobs.gcs import object_of_url  # the Google libraries load only here

        found = object_of_url(uri)
        if found is not None:
            return f"gs://{found[0]}/{found[1]}"
    raise InvalidInput.field(
        SOURCE_FIELD,
        "expected gs://bucket/object or a Cloud Storage URL of one "
        "(https://storage.googleapis.com/bucket/object); no other URL is read",
    )


def _read_source(uri: str, settings: Settings) -> bytes:
    return service.fetch_tflite(
        uri, policy=FetchPolicy.of(settings), max_bytes=settings.max_tflite_bytes
    )


# -- models --------------------------------------------------------------------------------


@router.post(
    "/projects/{project}/models",
    response_model=FirebaseOperation,
    response_model_exclude_none=True,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, PayloadTooLarge, *AUTH),
)
def firebase_create_model(
    project: Project,
    create_in: FirebaseModelCreate,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> FirebaseOperation:
    """Create a model from a .tflite file in Cloud Storage; a file that fails the checks still
    makes the model, with state.validationError (answered as a done operation)."""
    data = _read_source(_source_uri(create_in.tflite_model), settings)
    model = service.create_uploaded(
        session,
        blobs,
        display_name=create_in.display_name,
        tags=create_in.tags,
        data=data,
        max_bytes=settings.max_tflite_bytes,
    )
    return _done(session, blobs, project, model)


@router.get(
    "/projects/{project}/models",
    response_model=FirebaseModelList,
    response_model_exclude_none=True,
    dependencies=READ,
    responses=error_responses(InvalidInput, *AUTH),
)
def firebase_list_models(
    project: Project,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    filter: Annotated[
        str | None,
        Query(
            description="display_name = x, display_name : prefix*, tags: a AND tags: b, "
            "state.published = true"
        ),
    ] = None,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
    # The Python SDK sends these spellings.
    sdk_page_size: Annotated[int | None, Query(alias="page_size", include_in_schema=False)] = None,
    sdk_page_token: Annotated[
        str | None, Query(alias="page_token", include_in_schema=False)
    ] = None,
) -> FirebaseModelList:
    """List models, newest first, optionally filtered (page_size/page_token work too)."""
    size = check_page_size(
        page_size if page_size is not None else sdk_page_size,
        default=settings.default_page_size,
    )
    token = page_token or sdk_page_token
    parsed = filters.parse_filter(filter)
    models, cursor = service.list_models(
        session,
        page_size=size,
        after=decode_token(token, filter_key=filter or ""),
        where=filters.to_clause(parsed) if parsed is not None else None,
    )
    return FirebaseModelList(
        models=read_models(session, blobs, project, list(models)),
        next_page_token=encode_token(cursor, filter_key=filter or "") if cursor else None,
    )


@router.get(
    "/projects/{project}/models/{modelId}",
    response_model=FirebaseModel,
    response_model_exclude_none=True,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def firebase_get_model(
    project: Project, model_id: ModelId, session: SessionDep, blobs: BlobsDep
) -> FirebaseModel:
    """Get a model."""
    return read_models(session, blobs, project, [service.get(session, model_id=model_id)])[0]


@router.patch(
    "/projects/{project}/models/{modelId}",
    response_model=FirebaseOperation,
    response_model_exclude_none=True,
    dependencies=WRITE,
    responses=error_responses(
        InvalidInput,
        NotFound,
        FailedPrecondition,
        Conflict,
        AlreadyExists,
        PreconditionFailed,
        PayloadTooLarge,
        *AUTH,
    ),
)
def firebase_update_model(
    project: Project,
    model_id: ModelId,
    patch_in: FirebaseModelPatch,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    update_mask: Annotated[
        str | None,
        Query(
            alias="updateMask",
            description="displayName, tags, state.published, tfliteModel.gcsTfliteUri; "
            "default: displayName, tags and the file, those the body sets",
        ),
    ] = None,
    if_match: IfMatch = None,
) -> FirebaseOperation:
    """Rename, retag, publish or unpublish a model, or give it a new file (a new version;
    a published model then publishes it once it passes the checks)."""
    fields = _patched_fields(patch_in, update_mask)
    model = service.get(session, model_id=model_id)
    service.check_etag(model, if_match)
    if "file" in fields:
        _replace_file(session, blobs, settings, model, patch_in.tflite_model)
    if fields & {"display_name", "tags"}:
        mask = ",".join(f for f in ("display_name", "tags") if f in fields)
        update_in = ModelUpdate(display_name=patch_in.display_name, tags=patch_in.tags or [])
        service.update(
            session, model_id=model_id, update_in=update_in, update_mask=mask, if_match=None
        )
    if "published" in fields:
        published = patch_in.state.published if patch_in.state else None
        if published is None:
            raise InvalidInput.field("state.published", "is in updateMask but not in the body")
        if not published:
            service.unpublish(session, model_id=model_id, if_match=None)
        elif model.published_split is None:
            service.publish(session, model_id=model_id, publish_in=PublishRequest(), if_match=None)
    # As the native routes do: what apps get changed, or a mirrored model's name or tags.
    if fields & {"published", "file"} or model.firebase_mirror is not None:
        mirror.request_sync(session, model_id=model_id, settings=settings)
    return _done(session, blobs, project, model)


def _patched_fields(patch_in: FirebaseModelPatch, update_mask: str | None) -> set[str]:
    if update_mask is None or not update_mask.strip():
        # The SDK's update_model sends the whole model without a mask: what can change by
        # itself is the name, the tags and the file; publishing is always asked for by mask.
        fields: set[str] = {f for f in ("display_name", "tags") if f in patch_in.model_fields_set}
        if patch_in.tflite_model is not None and (
            patch_in.tflite_model.gcs_tflite_uri or patch_in.tflite_model.automl_model
        ):
            fields.add("file")
        if not fields:
            raise InvalidInput.field(
                "body", "nothing to update: set displayName, tags or tfliteModel"
            )
        return fields
    fields = set()
    for path in (p.strip() for p in update_mask.split(",")):
        if path not in MASK_PATHS:
            raise InvalidInput.field(
                "updateMask",
                f"cannot update {path!r}; updatable: displayName, tags, state.published, "
                f"{SOURCE_FIELD}",
            )
        fields.add(MASK_PATHS[path])
    return fields


def _replace_file(
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    model: Model,
    source: FirebaseTfliteSource | None,
) -> None:
    """A new version from the file named, unless it is the file the model already shows (the
    SDK sends a model back with the file it read)."""
    uri = _source_uri(source)
    shown = _shown_files(session, [model])[model.id]
    if shown is not None and uri == _gs_uri(blobs, shown):
        return
    data = _read_source(uri, settings)
    if shown is not None and hashlib.sha256(data).hexdigest() == shown.sha256:
        return
    service.add_uploaded_version(
        session,
        blobs,
        model_id=model.id,
        data=data,
        max_bytes=settings.max_tflite_bytes,
        if_match=None,
    )
    # Firebase's model has one file: apps get the new one once it passes the checks.
    if model.published_split is not None and model.validation_error is None:
        service.publish(session, model_id=model.id, publish_in=PublishRequest(), if_match=None)


@router.delete(
    "/projects/{project}/models/{modelId}",
    response_model=FirebaseEmpty,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, Conflict, PreconditionFailed, *AUTH),
)
def firebase_delete_model(
    project: Project,
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    if_match: IfMatch = None,
) -> FirebaseEmpty:
    """Delete a model, published or not (as Firebase ML does); its files go with it."""
    model = service.get(session, model_id=model_id)
    service.check_etag(model, if_match)
    mirror.request_sync(session, model_id=model_id, settings=settings)  # before the row goes
    service.delete(session, model_id=model_id, force=True, if_match=if_match)
    return FirebaseEmpty()


# -- operations ----------------------------------------------------------------------------


def _operation(
    session: Session, blobs: BlobStore, project: str, job: Job, model_id: str
) -> FirebaseOperation:
    state = JobState(job.state)
    operation = FirebaseOperation(
        name=f"projects/{project}/operations/{job.id}",
        metadata=FirebaseOperationMetadata(name=f"projects/{project}/models/{model_id}"),
        done=state.is_terminal,
    )
    if state == JobState.SUCCEEDED:
        try:
            model = service.get(session, model_id=model_id)
        except NotFound:
            return operation  # deleted since: the SDK then reads the model and gets NOT_FOUND
        [read] = read_models(session, blobs, project, [model])
        operation.response = FirebaseModelResponse.model_validate(read.model_dump())
    elif state.is_terminal and job.error:
        operation.error = FirebaseStatus(
            code=int(job.error.get("code", 2)),
            message=str(job.error.get("message", "")),
            details=job.error.get("details"),
        )
    return operation


def _model_job(session: Session, operation_id: str) -> tuple[Job, str]:
    """A job that changes a model, and the model's id; other jobs are not Firebase's."""
    job = jobs_service.get(session, job_id=operation_id)
    model_name = job.resource_name or ""
    if not model_name.startswith("models/"):
        raise NotFound(f"operation {operation_id!r} not found")
    return job, model_name.removeprefix("models/")


@router.get(
    "/projects/{project}/operations/{operationId}",
    response_model=FirebaseOperation,
    response_model_exclude_none=True,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def firebase_get_operation(
    project: Project, operation_id: OperationId, session: SessionDep, blobs: BlobsDep
) -> FirebaseOperation:
    """Get an operation that changes a model (an activeOperations name); once done, its
    response is the model."""
    job, model_id = _model_job(session, operation_id)
    return _operation(session, blobs, project, job, model_id)


@router.get(
    "/operations/project/{project}/model/{modelId}/operation/{operationId}",
    response_model=FirebaseOperation,
    response_model_exclude_none=True,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def firebase_get_model_operation(
    project: Project,
    model_id: ModelId,
    operation_id: OperationId,
    session: SessionDep,
    blobs: BlobsDep,
) -> FirebaseOperation:
    """The same operation by the name older firebase-admin releases used."""
    job, changed = _model_job(session, operation_id)
    if changed != model_id:
        raise NotFound(f"operation {operation_id!r} of model {model_id!r} not found")
    return _operation(session, blobs, project, job, model_id)

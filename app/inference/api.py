"""Serving routes: deploy, undeploy and predict (Vertex AI's JSON, or a plain image upload)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.auth.dependencies import require
from app.auth.service import Scope
from app.config import Settings
from app.db.deployment import Deployment
from app.errors import (
    Conflict,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    error_responses,
)
from app.inference import service
from app.inference.schemas import (
    DeploymentRead,
    DeployRequest,
    PredictParameters,
    PredictRequest,
    PredictResponse,
)
from app.kit.blobs import BlobStore
from app.web.deps import BlobsDep, SessionDep, SettingsDep
from app.web.openapi import inlined_schema

router = APIRouter(prefix="/v1", tags=["prediction"])

ModelId = Annotated[str, Path(alias="modelId")]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]


def _deployment_read(deployment: Deployment) -> DeploymentRead:
    return DeploymentRead(
        model_id=deployment.model_id,
        model_version=deployment.model_version,
        artifact_sha256=deployment.artifact_sha256,
        deployed_model_id=service.deployed_model_id(deployment),
        create_time=deployment.created_at,
    )


@router.post(
    "/models/{modelId}:deploy",
    response_model=DeploymentRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def deploy(
    model_id: ModelId,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    deploy_in: Annotated[DeployRequest | None, Body()] = None,
) -> DeploymentRead:
    """Serve a model version's ONNX file for :predict (replacing what the model served)."""
    version = deploy_in.model_version if deploy_in else None
    deployment = service.deploy(session, blobs, settings, model_id=model_id, version=version)
    return _deployment_read(deployment)


@router.post(
    "/models/{modelId}:undeploy",
    response_model=DeploymentRead,
    dependencies=WRITE,
    responses=error_responses(NotFound, FailedPrecondition, *AUTH),
)
def undeploy(model_id: ModelId, session: SessionDep) -> DeploymentRead:
    """Stop serving a model; returns what was deployed."""
    return _deployment_read(service.undeploy(session, model_id=model_id))


_PREDICT_BODY: dict[str, Any] = {
    "content": {
        "application/json": {"schema": inlined_schema(PredictRequest)},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "confidenceThreshold": {"type": "number", "default": 0.0},
                    "maxPredictions": {"type": "integer", "default": 10},
                },
            }
        },
    }
}


@router.post(
    "/models/{modelId}:predict",
    response_model=PredictResponse,
    dependencies=READ,
    openapi_extra={"requestBody": _PREDICT_BODY},
    responses=error_responses(
        InvalidInput, NotFound, Conflict, PayloadTooLarge, ResourceExhausted, *AUTH
    ),
)
async def predict(
    model_id: ModelId,
    request: Request,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> PredictResponse:
    """Detect objects: Vertex AI's JSON ({"instances": [{"content": base64}], "parameters"})
    or one image as multipart field "file"; answers in Vertex's prediction JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, StarletteUploadFile):
            raise InvalidInput.field("file", "a multipart field 'file' with the image")
        try:
            parameters = PredictParameters.model_validate(
                {k: v for k, v in form.items() if k in ("confidenceThreshold", "maxPredictions")}
            )
        except ValidationError as exc:
            raise InvalidInput.of_validation(exc) from None
        images = [await upload.read()]
    elif content_type == "application/json":
        try:
            body = PredictRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise InvalidInput.of_validation(exc) from None
        parameters = body.parameters
        images = [service.decode_content(i.content, n) for n, i in enumerate(body.instances)]
    else:
        raise InvalidInput(
            'send Vertex\'s JSON {"instances": [{"content": "<base64>"}]} or the image as '
            "multipart/form-data (field 'file')"
        )
    # Decoding and inference are CPU work: off the event loop, as sync routes run.
    return await run_in_threadpool(_predict, session, blobs, settings, model_id, images, parameters)


def _predict(
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    model_id: str,
    images: list[bytes],
    parameters: PredictParameters,
) -> PredictResponse:
    service.check_instance_count(images, settings)
    served = service.serving(session, blobs, settings, model_id=model_id)
    # The request's transaction ends before the CPU work: SQLite's (BEGIN IMMEDIATE) holds
    # the database's write lock for its whole life, and requests waiting on it are let in in
    # no order (seconds at the tail under load, measured with bench/predict.py).
    session.commit()
    return service.predict_with(served, settings, images=images, parameters=parameters)

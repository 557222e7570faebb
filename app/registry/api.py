"""Model registry routes (read-only for now): models and their versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from app.auth.dependencies import require
from app.auth.service import Scope
from app.db.model import Model
from app.db.model_version import ModelVersion
from app.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated, error_responses
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.registry import service
from app.registry.schemas import ModelList, ModelRead, ModelVersionRead
from app.web.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["models"])

ModelId = Annotated[str, Path(alias="modelId")]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]


def _model_read(model: Model, versions: list[ModelVersion]) -> ModelRead:
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
                create_time=v.created_at,
            )
            for v in versions
        ],
        create_time=model.created_at,
        update_time=model.updated_at,
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
    return ModelList(
        models=[_model_read(m, versions[m.id]) for m in models],
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
    return _model_read(model, service.versions(session, [model])[model.id])

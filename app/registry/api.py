"""Model registry routes (read-only for now): models, their versions and evaluations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from app.auth.dependencies import require
from app.auth.service import Scope
from app.db.dataset_image import Split
from app.db.evaluation import Evaluation
from app.db.model import Model
from app.db.model_version import ModelVersion
from app.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated, error_responses
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.registry import service
from app.registry.schemas import (
    CocoMetrics,
    EvaluationArtifact,
    EvaluationList,
    EvaluationRead,
    EvaluationSlice,
    ModelList,
    ModelRead,
    ModelVersionRead,
    ObjectDetectionMetrics,
)
from app.web.deps import BlobsDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["models"])

ModelId = Annotated[str, Path(alias="modelId")]
EvaluationId = Annotated[str, Path(alias="evaluationId")]
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


def _evaluation_read(
    evaluation: Evaluation, document: dict[str, Any] | None = None
) -> EvaluationRead:
    read = EvaluationRead(
        id=evaluation.id,
        name=f"models/{evaluation.model_id}/evaluations/{evaluation.id}",
        model_id=evaluation.model_id,
        model_version=evaluation.model_version,
        dataset_id=evaluation.dataset_id,
        split=Split(evaluation.split),
        artifact=EvaluationArtifact(
            format=evaluation.artifact_format,
            sha256=evaluation.artifact_sha256,
        ),
        bounding_box_mean_average_precision=evaluation.bounding_box_mean_average_precision,
        ap50=evaluation.ap50,
        ap50_95=evaluation.ap50_95,
        evaluated_bounding_box_count=evaluation.evaluated_bounding_box_count,
        image_count=evaluation.image_count,
        create_time=evaluation.created_at,
    )
    if document is not None:
        read.metrics = ObjectDetectionMetrics.model_validate(document["metrics"])
        read.slices = [EvaluationSlice.model_validate(s) for s in document["slices"]]
        read.coco_metrics = CocoMetrics.model_validate(document["cocoMetrics"])
    return read


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


@router.get(
    "/models/{modelId}/evaluations",
    response_model=EvaluationList,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def list_evaluations(
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> EvaluationList:
    """List a model's evaluations, newest first, with their summary figures."""
    size = check_page_size(page_size, default=settings.default_page_size)
    evaluations, cursor = service.list_evaluations(
        session,
        model_id=model_id,
        page_size=size,
        after=decode_token(page_token, filter_key=model_id),
    )
    return EvaluationList(
        evaluations=[_evaluation_read(e) for e in evaluations],
        next_page_token=encode_token(cursor, filter_key=model_id) if cursor else None,
    )


@router.get(
    "/models/{modelId}/evaluations/{evaluationId}",
    response_model=EvaluationRead,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_evaluation(
    model_id: ModelId, evaluation_id: EvaluationId, session: SessionDep, blobs: BlobsDep
) -> EvaluationRead:
    """Get an evaluation with Vertex's metrics, per-label slices and COCO's figures."""
    evaluation = service.get_evaluation(session, model_id=model_id, evaluation_id=evaluation_id)
    return _evaluation_read(evaluation, service.evaluation_metrics(blobs, evaluation))

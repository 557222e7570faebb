"""Evaluation routes: evaluate on demand, read evaluations, the slider, per-image results,
plots and comparisons."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.orm import Session

from app.auth.dependencies import require
from app.auth.service import Scope
from app.db.dataset_image import Split
from app.db.evaluation import Evaluation
from app.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    error_responses,
)
from app.evaluation import service
from app.evaluation.schemas import (
    ArtifactFormat,
    CocoMetrics,
    EvaluationArtifact,
    EvaluationComparison,
    EvaluationCreate,
    EvaluationList,
    EvaluationRead,
    EvaluationSlice,
    ImageResult,
    ImageResultList,
    ObjectDetectionMetrics,
    ThresholdResult,
)
from app.jobs.schemas import OperationRead
from app.kit.blobs import BlobStore
from app.kit.pagination import (
    check_page_size,
    decode_offset_token,
    decode_token,
    encode_offset_token,
    encode_token,
)
from app.web.deps import BlobsDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["evaluations"])

ModelId = Annotated[str, Path(alias="modelId")]
EvaluationId = Annotated[str, Path(alias="evaluationId")]
ImageId = Annotated[str, Path(alias="imageId")]
Confidence = Annotated[float, Query(description="Detections scoring at least this count (0 to 1).")]
Iou = Annotated[
    float,
    Query(
        description="IoU a detection needs to match a box; the nearest stored threshold "
        "(0.05, 0.10 ... 0.95, 0.96 ... 0.99) is used."
    ),
]
LabelFilter = Annotated[str | None, Query(description="Only this label.")]
AUTH = (Unauthenticated, PermissionDenied)
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
}
# Plots and overlays are computed from immutable data: clients and proxies may keep them.
IMMUTABLE = {"Cache-Control": "private, max-age=3600"}


def evaluation_read(
    evaluation: Evaluation, document: dict[str, Any] | None = None
) -> EvaluationRead:
    read = EvaluationRead(
        id=evaluation.id,
        name=service.evaluation_name(evaluation),
        model_id=evaluation.model_id,
        model_version=evaluation.model_version,
        dataset_id=evaluation.dataset_id,
        split=Split(evaluation.split),
        artifact=EvaluationArtifact(
            format=cast(ArtifactFormat, evaluation.artifact_format),
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
        read.detection_count = document.get("detectionCount")
        read.inference_seconds = document.get("inferenceSeconds")
        read.metric_seconds = document.get("metricSeconds")
    return read


def _point(
    session: Session,
    blobs: BlobStore,
    model_id: str,
    evaluation_id: str,
    confidence: float,
    iou: float,
    label: str | None,
) -> tuple[Evaluation, service.Point]:
    """The evaluation a route names, and the (confidence, IoU) point it asks about."""
    evaluation = service.get_evaluation(session, model_id=model_id, evaluation_id=evaluation_id)
    return evaluation, service.point(blobs, evaluation, confidence=confidence, iou=iou, label=label)


# -- custom methods first: "/evaluations/{id}:threshold" must not match "/evaluations/{id}" --


@router.get(
    "/models/{modelId}/evaluations/{evaluationId}:threshold",
    response_model=ThresholdResult,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def threshold(
    model_id: ModelId,
    evaluation_id: EvaluationId,
    session: SessionDep,
    blobs: BlobsDep,
    confidence: Confidence = 0.5,
    iou: Iou = 0.5,
    label: LabelFilter = None,
    target_precision: Annotated[
        float | None,
        Query(
            alias="targetPrecision",
            description="Also recommend the lowest threshold reaching this precision.",
        ),
    ] = None,
) -> ThresholdResult:
    """The slider: precision, recall, F1 and counts at a point, recommended thresholds and
    the confusion matrix."""
    evaluation, at = _point(session, blobs, model_id, evaluation_id, confidence, iou, label)
    return service.threshold(evaluation, at, target_precision=target_precision)


@router.get(
    "/models/{modelId}/evaluations/{evaluationId}:compare",
    response_model=EvaluationComparison,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def compare(
    model_id: ModelId,
    evaluation_id: EvaluationId,
    session: SessionDep,
    blobs: BlobsDep,
    candidate: Annotated[
        str,
        Query(
            description="The other evaluation: models/{modelId}/evaluations/{evaluationId}, "
            "or an evaluation id of this model."
        ),
    ],
    confidence: Confidence = 0.5,
    iou: Iou = 0.5,
) -> EvaluationComparison:
    """Compare another evaluation with this one: per-label AP and the change at a point."""
    base = service.get_evaluation(session, model_id=model_id, evaluation_id=evaluation_id)
    other_model, other_id = service.parse_evaluation_name(candidate, model_id=model_id)
    other = service.get_evaluation(session, model_id=other_model, evaluation_id=other_id)
    return service.compare(blobs, base, other, confidence=confidence, iou=iou)


@router.get(
    "/models/{modelId}/evaluations/{evaluationId}/imageResults/{imageId}:render",
    dependencies=READ,
    response_class=Response,
    responses={**PNG, **error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH)},
)
def render_image_result(
    model_id: ModelId,
    evaluation_id: EvaluationId,
    image_id: ImageId,
    session: SessionDep,
    blobs: BlobsDep,
    confidence: Confidence = 0.5,
    iou: Iou = 0.5,
) -> Response:
    """The image with its ground truth and the detections at a point drawn on it (PNG)."""
    from app.evaluation.overlay import render

    _, at = _point(session, blobs, model_id, evaluation_id, confidence, iou, None)
    image = service.image_index(at.table, image_id)
    key = str(at.table.image_keys[image])
    if not blobs.exists(key):
        raise NotFound(f"image {image_id!r} is no longer stored")
    [result] = service.image_results(at, [image])
    png = render(blobs.get(key), result)
    return Response(png, media_type="image/png", headers=IMMUTABLE)


@router.post(
    "/models/{modelId}/evaluations",
    response_model=OperationRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def create_evaluation(
    model_id: ModelId, evaluation_in: EvaluationCreate, session: SessionDep
) -> OperationRead:
    """Evaluate a model file on a labelled split of a dataset, as an operation."""
    job = service.create(session, model_id=model_id, evaluation_in=evaluation_in)
    return OperationRead.from_job(job)


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
        evaluations=[evaluation_read(e) for e in evaluations],
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
    return evaluation_read(evaluation, service.evaluation_metrics(blobs, evaluation))


@router.get(
    "/models/{modelId}/evaluations/{evaluationId}/imageResults",
    response_model=ImageResultList,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def list_image_results(
    model_id: ModelId,
    evaluation_id: EvaluationId,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    confidence: Confidence = 0.5,
    iou: Iou = 0.5,
    label: LabelFilter = None,
    order_by: Annotated[
        str,
        Query(
            alias="orderBy",
            description="errorCount, falsePositiveCount, falseNegativeCount or "
            "confusionCount; most first.",
        ),
    ] = "errorCount",
    only_errors: Annotated[
        bool, Query(alias="onlyErrors", description="Leave out images without such errors.")
    ] = True,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> ImageResultList:
    """The error browser: images with their false positives, misses and confusions at a
    point, most errors first."""
    size = check_page_size(page_size, default=settings.default_page_size)
    evaluation, at = _point(session, blobs, model_id, evaluation_id, confidence, iou, label)
    order = service.image_order(at, order_by=order_by, only_errors=only_errors)
    query = f"{evaluation.id}|{at.outcome.confidence}|{at.outcome.iou_threshold}|{label}"
    query += f"|{order_by}|{only_errors}"
    start = decode_offset_token(page_token, filter_key=query)
    end = start + size
    return ImageResultList(
        confidence_threshold=at.outcome.confidence,
        iou_threshold=at.outcome.iou_threshold,
        image_results=service.image_results(at, order[start:end]),
        total_size=len(order),
        next_page_token=encode_offset_token(end, filter_key=query) if end < len(order) else None,
    )


@router.get(
    "/models/{modelId}/evaluations/{evaluationId}/imageResults/{imageId}",
    response_model=ImageResult,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH),
)
def get_image_result(
    model_id: ModelId,
    evaluation_id: EvaluationId,
    image_id: ImageId,
    session: SessionDep,
    blobs: BlobsDep,
    confidence: Confidence = 0.5,
    iou: Iou = 0.5,
) -> ImageResult:
    """One image's detections and ground truth at a point."""
    _, at = _point(session, blobs, model_id, evaluation_id, confidence, iou, None)
    [result] = service.image_results(at, [service.image_index(at.table, image_id)])
    return result


@router.get(
    "/models/{modelId}/evaluations/{evaluationId}/plots/{plot}.png",
    dependencies=READ,
    response_class=Response,
    responses={**PNG, **error_responses(InvalidInput, NotFound, FailedPrecondition, *AUTH)},
)
def plot(
    model_id: ModelId,
    evaluation_id: EvaluationId,
    plot: Annotated[Literal["pr", "threshold", "confusion"], Path()],
    session: SessionDep,
    blobs: BlobsDep,
    confidence: Annotated[
        float, Query(description="For the confusion matrix: the confidence threshold.")
    ] = 0.5,
    iou: Iou = 0.5,
    label: Annotated[
        str | None, Query(description="For the threshold plot: one label (default: all).")
    ] = None,
) -> Response:
    """A PNG plot: precision-recall curves per label (pr); precision, recall and F1 against
    the confidence threshold (threshold); the confusion matrix (confusion)."""
    from app.evaluation import plots

    _, at = _point(session, blobs, model_id, evaluation_id, confidence, iou, label)
    if plot == "pr":
        figure = plots.precision_recall_figure(at.table, iou=iou)
    elif plot == "threshold":
        figure = plots.threshold_figure(at.table, iou=iou, label=at.label)
    else:
        figure = plots.confusion_figure(at.table, confidence=confidence, iou=iou)
    return Response(plots.png(figure), media_type="image/png", headers=IMMUTABLE)

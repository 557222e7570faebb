"""Rules for the model registry: models, their immutable versions, their evaluations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.db.evaluation import Evaluation
from app.db.model import Model
from app.db.model_version import ModelVersion
from app.errors import NotFound
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.registry import repository

if TYPE_CHECKING:
    from app.detector.types import Evaluation as Scored

ARTIFACT_PYTORCH = "pytorch"


# -- storage layout ----------------------------------------------------------------------


def weights_key(model_id: str, version: int) -> str:
    return f"models/{model_id}/versions/{version}/model.pt"


def metrics_key(model_id: str, evaluation_id: str) -> str:
    return f"models/{model_id}/evaluations/{evaluation_id}/metrics.json"


def model_prefix(model_id: str) -> str:
    return f"models/{model_id}/"


# -- models ------------------------------------------------------------------------------


def get(session: Session, *, model_id: str) -> Model:
    model = repository.get(session, model_id) if is_valid_id(model_id) else None
    if model is None:
        raise NotFound(f"model {model_id!r} not found")
    return model


def list_models(
    session: Session, *, page_size: int, after: PageCursor | None
) -> tuple[Sequence[Model], PageCursor | None]:
    rows = repository.list_page(session, limit=page_size + 1, after=after)
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], PageCursor(time=last.created_at, id=last.id)


def versions(session: Session, models: Sequence[Model]) -> dict[str, list[ModelVersion]]:
    return repository.versions_of(session, [m.id for m in models])


def latest_version(session: Session, *, model_id: str) -> ModelVersion:
    version = repository.latest_version(session, model_id)
    if version is None:
        raise NotFound(f"model {model_id!r} has no version")
    return version


@dataclass(frozen=True)
class StoredFile:
    key: str
    sha256: str
    size_bytes: int


def create_model(
    session: Session,
    *,
    model_id: str,
    display_name: str,
    labels: Sequence[str],
    model_type: str,
    input_size: int,
    training_job_id: str | None,
    weights: StoredFile,
) -> tuple[Model, ModelVersion]:
    """Register a new model with its first version (the file must already be stored)."""
    now = utcnow()
    model = Model(
        id=model_id,
        display_name=display_name,
        labels=list(labels),
        model_type=model_type,
        input_size=input_size,
        training_job_id=training_job_id,
        created_at=now,
        updated_at=now,
    )
    repository.add(session, model)
    version = ModelVersion(
        id=new_id(),
        model_id=model_id,
        version=1,
        training_job_id=training_job_id,
        weights_blob_key=weights.key,
        weights_sha256=weights.sha256,
        weights_size_bytes=weights.size_bytes,
        created_at=now,
    )
    repository.add(session, version)
    return model, version


# -- evaluations -------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationSummary:
    bounding_box_mean_average_precision: float | None
    ap50: float | None
    ap50_95: float | None
    evaluated_bounding_box_count: int
    image_count: int

    @classmethod
    def of(cls, scored: Scored) -> EvaluationSummary:
        metrics = scored.vertex["metrics"]
        return cls(
            bounding_box_mean_average_precision=_defined(
                metrics["boundingBoxMeanAveragePrecision"]
            ),
            ap50=_defined(scored.coco.get("AP50")),
            ap50_95=_defined(scored.coco.get("AP")),
            evaluated_bounding_box_count=int(metrics["evaluatedBoundingBoxCount"]),
            image_count=scored.image_count,
        )


def _defined(value: float | None) -> float | None:
    """COCO writes -1 for a figure it cannot define (no ground truth): None on our rows."""
    return None if value is None or value < 0 else float(value)


def metrics_document(scored: Scored) -> bytes:
    """The stored form of an evaluation: Vertex's ``metrics`` and ``slices``, COCO's
    figures overall and per label, and the counts."""
    return json.dumps(
        {
            "metrics": scored.vertex["metrics"],
            "slices": scored.vertex["slices"],
            "cocoMetrics": {"overall": scored.coco, "perLabel": scored.coco_per_label},
            "imageCount": scored.image_count,
            "boxCount": scored.box_count,
            "detectionCount": scored.detection_count,
            "seconds": scored.seconds,
        }
    ).encode()


def add_evaluation(
    session: Session,
    *,
    evaluation_id: str,
    model_version: ModelVersion,
    dataset_id: str,
    split: str,
    metrics_blob_key: str,
    summary: EvaluationSummary,
) -> Evaluation:
    """Record an evaluation of a model version (the metrics blob must already be stored)."""
    evaluation = Evaluation(
        id=evaluation_id,
        model_id=model_version.model_id,
        model_version=model_version.version,
        dataset_id=dataset_id,
        split=split,
        artifact_format=ARTIFACT_PYTORCH,
        artifact_sha256=model_version.weights_sha256,
        metrics_blob_key=metrics_blob_key,
        bounding_box_mean_average_precision=summary.bounding_box_mean_average_precision,
        ap50=summary.ap50,
        ap50_95=summary.ap50_95,
        evaluated_bounding_box_count=summary.evaluated_bounding_box_count,
        image_count=summary.image_count,
        created_at=utcnow(),
    )
    repository.add(session, evaluation)
    return evaluation


def list_evaluations(
    session: Session, *, model_id: str, page_size: int, after: PageCursor | None
) -> tuple[Sequence[Evaluation], PageCursor | None]:
    get(session, model_id=model_id)
    rows = repository.list_evaluations(session, model_id=model_id, limit=page_size + 1, after=after)
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], PageCursor(time=last.created_at, id=last.id)


def get_evaluation(session: Session, *, model_id: str, evaluation_id: str) -> Evaluation:
    evaluation = (
        repository.get_evaluation(session, model_id=model_id, evaluation_id=evaluation_id)
        if is_valid_id(evaluation_id)
        else None
    )
    if evaluation is None:
        get(session, model_id=model_id)
        raise NotFound(f"evaluation {evaluation_id!r} not found in model {model_id!r}")
    return evaluation


def evaluation_metrics(blobs: BlobStore, evaluation: Evaluation) -> dict[str, Any]:
    """The stored metrics document: ``metrics``, ``slices``, ``cocoMetrics`` and counts."""
    document: dict[str, Any] = json.loads(blobs.get(evaluation.metrics_blob_key))
    return document

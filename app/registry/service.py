"""Rules for the model registry: models and their immutable versions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.model import Model
from app.db.model_version import ModelVersion
from app.errors import NotFound
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.registry import repository

# -- storage layout ----------------------------------------------------------------------


def weights_key(model_id: str, version: int) -> str:
    return f"models/{model_id}/versions/{version}/model.pt"


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


def get_version(session: Session, *, model_id: str, version: int) -> ModelVersion | None:
    return repository.get_version(session, model_id, version)


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

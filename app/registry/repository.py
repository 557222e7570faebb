"""Every query on models and their versions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.model import Model
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.kit.pagination import PageCursor, newest_first

# -- models ------------------------------------------------------------------------------


def add(session: Session, row: Model | ModelVersion | ModelArtifact) -> None:
    session.add(row)
    session.flush()


def get(session: Session, model_id: str) -> Model | None:
    return session.get(Model, model_id)


def list_page(session: Session, *, limit: int, after: PageCursor | None) -> Sequence[Model]:
    query = newest_first(
        select(Model), time=Model.created_at, id=Model.id, after=after, limit=limit
    )
    return session.scalars(query).all()


# -- versions ----------------------------------------------------------------------------


def versions_of(session: Session, model_ids: Sequence[str]) -> dict[str, list[ModelVersion]]:
    """Each model's versions, oldest first."""
    versions: dict[str, list[ModelVersion]] = {model_id: [] for model_id in model_ids}
    if model_ids:
        for version in session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id.in_(model_ids))
            .order_by(ModelVersion.model_id, ModelVersion.version)
        ):
            versions[version.model_id].append(version)
    return versions


def get_version(session: Session, model_id: str, version: int) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(
            ModelVersion.model_id == model_id, ModelVersion.version == version
        )
    ).one_or_none()


def latest_version(session: Session, model_id: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.model_id == model_id)
        .order_by(ModelVersion.version.desc())
        .limit(1)
    ).first()


# -- exported files ----------------------------------------------------------------------


def get_artifact(
    session: Session, *, model_id: str, version: int, format: str
) -> ModelArtifact | None:
    return session.scalars(
        select(ModelArtifact).where(
            ModelArtifact.model_id == model_id,
            ModelArtifact.model_version == version,
            ModelArtifact.format == format,
        )
    ).one_or_none()


def artifacts_of(session: Session, model_ids: Sequence[str]) -> dict[str, list[ModelArtifact]]:
    """Each model's exported files, by version then format."""
    found: dict[str, list[ModelArtifact]] = {model_id: [] for model_id in model_ids}
    if model_ids:
        for artifact in session.scalars(
            select(ModelArtifact)
            .where(ModelArtifact.model_id.in_(model_ids))
            .order_by(ModelArtifact.model_id, ModelArtifact.model_version, ModelArtifact.format)
        ):
            found[artifact.model_id].append(artifact)
    return found

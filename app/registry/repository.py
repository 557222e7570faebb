"""Every query on models and their versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session

from app.db.job import TERMINAL_STATES, Job
from app.db.model import Model, ModelTag
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.kit.pagination import PageCursor, newest_first

# -- models ------------------------------------------------------------------------------


def add(session: Session, row: Model | ModelVersion | ModelArtifact) -> None:
    session.add(row)
    session.flush()


def get(session: Session, model_id: str) -> Model | None:
    return session.get(Model, model_id)


def list_page(
    session: Session,
    *,
    limit: int,
    after: PageCursor | None,
    where: ColumnElement[bool] | None = None,
) -> Sequence[Model]:
    query = select(Model) if where is None else select(Model).where(where)
    query = newest_first(query, time=Model.created_at, id=Model.id, after=after, limit=limit)
    return session.scalars(query).all()


def published_named(session: Session, display_name: str) -> Sequence[Model]:
    """Published models with this display name, most recently published first."""
    return session.scalars(
        select(Model)
        .where(Model.display_name == display_name, Model.published_split.is_not(None))
        # NULLS LAST spelled out: PostgreSQL sorts NULLs first in a descending order.
        .order_by(Model.published_at.desc().nulls_last(), Model.created_at.desc(), Model.id)
    ).all()


def delete_model(session: Session, model: Model) -> None:
    """The model's rows; its versions, files' rows, tags, evaluations and deployment cascade."""
    session.delete(model)
    session.flush()


def get_for_update(session: Session, model_id: str) -> Model | None:
    """The model, its row locked until the transaction ends (PostgreSQL; SQLite's one writer
    is lock enough)."""
    return session.get(Model, model_id, with_for_update=True, populate_existing=True)


def set_firebase_mirror(session: Session, model_id: str, record: dict[str, Any]) -> None:
    """Record where the Firebase ML mirror of a model stands. A worker writes it, not a
    client: the revision (so the etag a client holds for If-Match) stays as it is."""
    session.execute(
        update(Model)
        .where(Model.id == model_id)
        .values(firebase_mirror=record)
        .execution_options(synchronize_session="evaluate")
    )


# -- tags --------------------------------------------------------------------------------


def tags_of(session: Session, model_ids: Sequence[str]) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {model_id: [] for model_id in model_ids}
    if model_ids:
        for row in session.scalars(
            select(ModelTag).where(ModelTag.model_id.in_(model_ids)).order_by(ModelTag.tag)
        ):
            tags[row.model_id].append(row.tag)
    return tags


def set_tags(session: Session, model_id: str, tags: Sequence[str]) -> None:
    session.execute(delete(ModelTag).where(ModelTag.model_id == model_id))
    session.add_all(ModelTag(model_id=model_id, tag=tag) for tag in sorted(set(tags)))
    session.flush()


# -- operations on a model ---------------------------------------------------------------


def unfinished_jobs_of(session: Session, resource_names: Sequence[str]) -> dict[str, list[Job]]:
    """Each resource's jobs that have not reached a terminal state, oldest first."""
    found: dict[str, list[Job]] = {name: [] for name in resource_names}
    if resource_names:
        for job in session.scalars(
            select(Job)
            .where(
                Job.resource_name.in_(resource_names),
                Job.state.not_in([state.value for state in TERMINAL_STATES]),
            )
            .order_by(Job.created_at, Job.id)
        ):
            assert job.resource_name is not None
            found[job.resource_name].append(job)
    return found


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

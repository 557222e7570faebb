"""Rules for the model registry: models and their immutable versions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db.job import Job
from app.db.model import Model
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.errors import FailedPrecondition, InvalidInput, NotFound
from app.jobs import service as jobs_service
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.registry import repository
from app.registry.schemas import ExportRequest

EXPORT_KIND = "registry.export"
PYTORCH = "pytorch"
ARTIFACT_FILES = {
    "onnx": "model.onnx",
    "tflite": "model.tflite",
    "tflite-int8": "model_int8.tflite",
}
# The formats this build exports; the others are refused with the reason.
EXPORTABLE = ("onnx", "tflite", "tflite-int8")
# Calibrated on the images the version was trained on.
INT8 = "tflite-int8"

# -- storage layout ----------------------------------------------------------------------


def weights_key(model_id: str, version: int) -> str:
    return f"models/{model_id}/versions/{version}/model.pt"


def artifact_key(model_id: str, version: int, format: str) -> str:
    return f"models/{model_id}/versions/{version}/{ARTIFACT_FILES[format]}"


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


def version_of(session: Session, *, model_id: str, version: int | None) -> ModelVersion:
    """A model's version by number, or its latest; InvalidInput names a missing number."""
    get(session, model_id=model_id)
    if version is None:
        return latest_version(session, model_id=model_id)
    found = get_version(session, model_id=model_id, version=version)
    if found is None:
        raise InvalidInput.field("modelVersion", f"model {model_id!r} has no version {version}")
    return found


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


# -- exported files ----------------------------------------------------------------------


def request_export(session: Session, *, model_id: str, export_in: ExportRequest) -> Job:
    """Queue the export of a model version to a format, as an operation; exporting again
    returns the same file (the export is deterministic and kept)."""
    version = version_of(session, model_id=model_id, version=export_in.model_version)
    if export_in.format not in EXPORTABLE:
        raise FailedPrecondition(
            f"export to {export_in.format} is not available in this build; "
            f"it exports {list(EXPORTABLE)}"
        )
    if export_in.format == INT8 and version.training_job_id is None:
        raise FailedPrecondition(
            f"{INT8} is calibrated on the images a model was trained on, and version "
            f"{version.version} of {model_id!r} did not come from a training job here"
        )
    return jobs_service.enqueue(
        session,
        kind=EXPORT_KIND,
        payload={"modelId": model_id, "modelVersion": version.version, "format": export_in.format},
        description=f"export {model_id} v{version.version} to {export_in.format}",
    )


def get_artifact(
    session: Session, *, model_id: str, version: int, format: str
) -> ModelArtifact | None:
    return repository.get_artifact(session, model_id=model_id, version=version, format=format)


def artifacts(session: Session, models: Sequence[Model]) -> dict[str, list[ModelArtifact]]:
    return repository.artifacts_of(session, [m.id for m in models])


def add_artifact(
    session: Session,
    *,
    version: ModelVersion,
    format: str,
    stored: StoredFile,
    details: dict[str, Any],
) -> ModelArtifact:
    """Record an exported file of a model version (the file must already be stored)."""
    artifact = ModelArtifact(
        id=new_id(),
        model_id=version.model_id,
        model_version=version.version,
        format=format,
        blob_key=stored.key,
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
        details=details,
        created_at=utcnow(),
    )
    repository.add(session, artifact)
    return artifact


@dataclass(frozen=True)
class VersionFile:
    """A model version's file in one format: its weights (``pytorch``) or an export."""

    format: str
    key: str
    sha256: str
    size_bytes: int

    @property
    def filename(self) -> str:
        return "model.pt" if self.format == PYTORCH else ARTIFACT_FILES[self.format]


def file_of(session: Session, version: ModelVersion, format: str) -> VersionFile | None:
    """The version's file in ``format``, or None when it was not exported to it."""
    if format == PYTORCH:
        return VersionFile(
            PYTORCH, version.weights_blob_key, version.weights_sha256, version.weights_size_bytes
        )
    artifact = get_artifact(
        session, model_id=version.model_id, version=version.version, format=format
    )
    if artifact is None:
        return None
    return VersionFile(format, artifact.blob_key, artifact.sha256, artifact.size_bytes)


def download(session: Session, *, model_id: str, version: int | None, format: str) -> VersionFile:
    """Where a version's file in a format is; NotFound says how to export it."""
    found = version_of(session, model_id=model_id, version=version)
    stored = file_of(session, found, format)
    if stored is None:
        raise NotFound(
            f"model {model_id!r} version {found.version} has no {format} file; export it "
            f"with POST /v1/models/{model_id}:export"
        )
    return stored

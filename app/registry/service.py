"""Rules for the model registry: models and their immutable versions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from app.datasets.sources import FetchPolicy, SourceError, fetch
from app.db.job import Job
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
    PreconditionFailed,
)
from app.jobs import service as jobs_service
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.registry import repository
from app.registry.schemas import ExportRequest, ModelUpdate, PublishRequest

if TYPE_CHECKING:
    from app.detector.tflite_check import TfliteFacts

EXPORT_KIND = "registry.export"
PURGE_KIND = "registry.purge"
TFLITE = "tflite"
# updateMask paths a PATCH may name, in either spelling, and the field each sets.
UPDATABLE = {"displayName": "display_name", "display_name": "display_name", "tags": "tags"}
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
    session: Session,
    *,
    page_size: int,
    after: PageCursor | None,
    where: ColumnElement[bool] | None = None,
) -> tuple[Sequence[Model], PageCursor | None]:
    rows = repository.list_page(session, limit=page_size + 1, after=after, where=where)
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], PageCursor(time=last.created_at, id=last.id)


def resource_name(model_id: str) -> str:
    return f"models/{model_id}"


def etag_of(model: Model) -> str:
    """Changes whenever what a client sees of the model changes (its revision)."""
    return hashlib.sha256(f"{model.id}/{model.revision}".encode()).hexdigest()[:20]


def check_etag(model: Model, etag: str | None) -> None:
    """PreconditionFailed unless ``etag`` (If-Match or a body ``etag``) is absent, ``*`` or
    the model's current etag."""
    if etag is None or not etag.strip():
        return
    given = {t.strip().removeprefix("W/").strip('"') for t in etag.split(",")}
    if "*" in given or etag_of(model) in given:
        return
    raise PreconditionFailed(
        f"model {model.id!r} changed since it was read (etag {etag.strip()}, now "
        f"{etag_of(model)}): read it again and retry"
    )


def tags(session: Session, models: Sequence[Model]) -> dict[str, list[str]]:
    return repository.tags_of(session, [m.id for m in models])


def active_operations(session: Session, models: Sequence[Model]) -> dict[str, list[Job]]:
    """Each model's unfinished operations (exports, validations, mirroring)."""
    found = repository.unfinished_jobs_of(session, [resource_name(m.id) for m in models])
    return {m.id: found[resource_name(m.id)] for m in models}


def check_unlocked(session: Session, model: Model) -> None:
    running = active_operations(session, [model])[model.id]
    if running:
        raise Conflict(
            f"model {model.id!r} is locked while operations/{running[0].id} "
            f"({running[0].description}) runs; retry when it is done"
        )


def published_versions(model: Model) -> dict[int, int]:
    """Published version numbers and their weights; empty while unpublished."""
    return {int(v): w for v, w in (model.published_split or {}).items()}


def shown_version(model: Model, versions: Sequence[ModelVersion]) -> int | None:
    """The version a model stands for (its modelHash, Firebase's one file): the heaviest
    published one, else the latest."""
    published = main_published_version(model)
    return published if published is not None else max((v.version for v in versions), default=None)


def main_published_version(model: Model) -> int | None:
    """The heaviest published version (the newer on a tie)."""
    split = published_versions(model)
    return max(split, key=lambda v: (split[v], v)) if split else None


def _save(session: Session, model: Model) -> None:
    """Flush a change to the model: its revision moves, and a concurrent writer that read the
    same revision loses with a Conflict instead of overwriting."""
    model_id = model.id  # the failed flush below expires the object
    model.updated_at = utcnow()
    try:
        session.flush()
    except StaleDataError:
        raise Conflict(f"model {model_id!r} was changed concurrently; read it again") from None


def update(
    session: Session,
    *,
    model_id: str,
    update_in: ModelUpdate,
    update_mask: str | None,
    if_match: str | None,
) -> Model:
    """Change a model's display name and tags (the fields ``update_mask`` names, or those
    the body sets)."""
    model = get(session, model_id=model_id)
    check_etag(model, if_match or update_in.etag)
    fields = _masked_fields(update_in, update_mask)
    check_unlocked(session, model)
    if "display_name" in fields:
        if update_in.display_name is None:
            raise InvalidInput.field("displayName", "is in updateMask but not in the body")
        if model.published_split is not None:
            _check_name_free(session, model, update_in.display_name)
        model.display_name = update_in.display_name
    if "tags" in fields:
        repository.set_tags(session, model.id, update_in.tags or [])
    _save(session, model)
    return model


def _masked_fields(update_in: ModelUpdate, update_mask: str | None) -> set[str]:
    if update_mask is None or not update_mask.strip():
        fields = {f for f in update_in.model_fields_set if f in UPDATABLE.values()}
        if not fields:
            raise InvalidInput.field("body", "nothing to update: set displayName or tags")
        return fields
    fields = set()
    for path in (p.strip() for p in update_mask.split(",")):
        if path not in UPDATABLE:
            raise InvalidInput.field(
                "updateMask", f"cannot update {path!r}; updatable: displayName, tags"
            )
        fields.add(UPDATABLE[path])
    return fields


def published_named(session: Session, display_name: str) -> Sequence[Model]:
    """Published models with this display name (apps download by it), latest published
    first; publishing keeps it to one."""
    return repository.published_named(session, display_name)


def _check_name_free(session: Session, model: Model, display_name: str) -> None:
    for other in repository.published_named(session, display_name):
        if other.id != model.id:
            raise AlreadyExists(
                f"model {other.id!r} is published as {display_name!r}, the name apps download "
                "by; unpublish it or choose another name"
            )


def publish(
    session: Session, *, model_id: str, publish_in: PublishRequest, if_match: str | None
) -> Model:
    """Publish a version (default the latest), or split downloads between versions by
    weight; each must have a TFLite file."""
    model = get(session, model_id=model_id)
    check_etag(model, if_match or publish_in.etag)
    check_unlocked(session, model)
    if model.validation_error is not None:
        raise FailedPrecondition(
            f"model {model_id!r} cannot be published: {model.validation_error['message']}"
        )
    split = _split(session, model, publish_in)
    for number in split:
        if file_of(session, _version(session, model, number), TFLITE) is None:
            raise FailedPrecondition(
                f"version {number} of {model_id!r} has no TFLite file to download; export it "
                f'first: POST /v1/models/{model_id}:export {{"format": "tflite", '
                f'"modelVersion": {number}}}'
            )
    _check_name_free(session, model, model.display_name)
    model.published_split = {str(v): w for v, w in sorted(split.items())}
    model.published_at = utcnow()
    _save(session, model)
    return model


def _split(session: Session, model: Model, publish_in: PublishRequest) -> dict[int, int]:
    if publish_in.traffic_split is None:
        return {
            version_of(session, model_id=model.id, version=publish_in.model_version).version: 100
        }
    if publish_in.model_version is not None:
        raise InvalidInput.field("trafficSplit", "give either modelVersion or trafficSplit")
    split: dict[int, int] = {}
    for key, weight in publish_in.traffic_split.items():
        if not key.isdigit() or int(key) < 1:
            raise InvalidInput.field("trafficSplit", f"{key!r} is not a version number")
        if not 1 <= weight <= 100:
            raise InvalidInput.field("trafficSplit", f"weight of version {key} must be 1-100")
        _version(session, model, int(key))
        split[int(key)] = weight
    if not split or sum(split.values()) != 100:
        raise InvalidInput.field(
            "trafficSplit", f"weights must sum to 100, not {sum(split.values())}"
        )
    return split


def _version(session: Session, model: Model, number: int) -> ModelVersion:
    found = get_version(session, model_id=model.id, version=number)
    if found is None:
        raise InvalidInput.field("modelVersion", f"model {model.id!r} has no version {number}")
    return found


def unpublish(session: Session, *, model_id: str, if_match: str | None) -> Model:
    """Stop serving the model to apps; its versions stay."""
    model = get(session, model_id=model_id)
    check_etag(model, if_match)
    check_unlocked(session, model)
    if model.published_split is not None:
        model.published_split = None
        model.published_at = None
        _save(session, model)
    return model


def delete(session: Session, *, model_id: str, force: bool, if_match: str | None) -> Job:
    """Delete a model and its versions; its files are removed by a queued job (so they go
    only once the deletion is committed). Refused while published unless ``force``."""
    model = get(session, model_id=model_id)
    check_etag(model, if_match)
    check_unlocked(session, model)
    if model.published_split is not None and not force:
        raise Conflict(
            f"model {model_id!r} is published, so apps may still download it; unpublish it "
            "first or delete with force=true"
        )
    purge = jobs_service.enqueue(
        session,
        kind=PURGE_KIND,
        payload={"prefix": model_prefix(model_id)},
        description=f"remove the files of deleted model {model_id}",
    )
    repository.delete_model(session, model)
    return purge


def next_version_number(session: Session, model_id: str) -> int:
    latest = repository.latest_version(session, model_id)
    return 1 if latest is None else latest.version + 1


def add_version(
    session: Session,
    *,
    model: Model,
    training_job_id: str | None,
    weights: StoredFile,
    format: str = "pytorch",
    attempts: int = 5,
) -> ModelVersion:
    """The model's next version, numbered safely against concurrent writers: a number taken
    meanwhile fails the unique key inside a savepoint, and the next one is tried. (The model
    row is left alone: a version is not an edit of the fields its etag guards.)"""
    for _ in range(attempts):
        number = next_version_number(session, model.id)
        version = ModelVersion(
            id=new_id(),
            model_id=model.id,
            version=number,
            format=format,
            training_job_id=training_job_id,
            weights_blob_key=weights.key,
            weights_sha256=weights.sha256,
            weights_size_bytes=weights.size_bytes,
            created_at=utcnow(),
        )
        try:
            with session.begin_nested():
                repository.add(session, version)
        except IntegrityError:
            continue
        return version
    raise Conflict(f"could not number a new version of {model.id!r}: too many concurrent writers")


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
    source: str = "training",
    format: str = PYTORCH,
    remote_model_name: str | None = None,
) -> tuple[Model, ModelVersion]:
    """Register a new model with its first version (the file must already be stored).

    A model Vertex AI trained has ``source="vertex"``, a TFLite file as its version's own
    file, and the Vertex model it came from (``remote_model_name``)."""
    now = utcnow()
    model = Model(
        id=model_id,
        display_name=display_name,
        labels=list(labels),
        model_type=model_type,
        input_size=input_size,
        training_job_id=training_job_id,
        source=source,
        created_at=now,
        updated_at=now,
    )
    repository.add(session, model)
    version = ModelVersion(
        id=new_id(),
        model_id=model_id,
        version=1,
        format=format,
        training_job_id=training_job_id,
        weights_blob_key=weights.key,
        weights_sha256=weights.sha256,
        weights_size_bytes=weights.size_bytes,
        remote_model_name=remote_model_name,
        created_at=now,
    )
    repository.add(session, version)
    return model, version


# -- uploaded TFLite files ---------------------------------------------------------------

UPLOADED_MODEL_TYPE = "CUSTOM_TFLITE"


def fetch_tflite(uri: str, *, policy: FetchPolicy, max_bytes: int) -> bytes:
    """The .tflite file ``uri`` names, read as imports read (gs://, allowed https, a path under
    the import root); one byte past ``max_bytes`` is read so that the size check can refuse it."""
    try:
        return fetch(uri, policy=policy, max_bytes=max_bytes + 1)
    except SourceError as exc:
        raise InvalidInput.field("tfliteModel.gcsTfliteUri", str(exc)) from None


def uploaded_key(model_id: str, sha256: str) -> str:
    """Content-addressed: a writer stores the file before it knows its version number."""
    return f"models/{model_id}/uploads/{sha256}.tflite"


def create_uploaded(
    session: Session,
    blobs: BlobStore,
    *,
    display_name: str,
    tags: Sequence[str],
    data: bytes,
    max_bytes: int,
) -> Model:
    """Register a user's ``.tflite`` detector (AutoML users bring theirs) as a new model.

    The file is checked in LiteRT first. One that is not a servable detector still makes the
    model, as Firebase ML does, with ``validation_error`` saying why; it cannot be published.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the .tflite file is {len(data)} bytes; the limit is {max_bytes}")
    now = utcnow()
    model = Model(
        id=new_id(),
        display_name=display_name,
        labels=[],
        model_type=UPLOADED_MODEL_TYPE,
        input_size=0,
        training_job_id=None,
        source="upload",
        created_at=now,
        updated_at=now,
    )
    repository.add(session, model)
    repository.set_tags(session, model.id, tags)
    _add_uploaded_version(session, blobs, model, data, max_bytes)
    return model


def add_uploaded_version(
    session: Session,
    blobs: BlobStore,
    *,
    model_id: str,
    data: bytes,
    max_bytes: int,
    if_match: str | None,
) -> ModelVersion:
    """A new version of an uploaded model from another ``.tflite`` file (same checks)."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the .tflite file is {len(data)} bytes; the limit is {max_bytes}")
    model = get(session, model_id=model_id)
    check_etag(model, if_match)
    if model.source != "upload":
        raise FailedPrecondition(
            f"model {model_id!r} was trained here; new versions come from training jobs"
        )
    check_unlocked(session, model)
    version = _add_uploaded_version(session, blobs, model, data, max_bytes)
    _save(session, model)
    return version


def tflite_details(facts: TfliteFacts) -> dict[str, Any]:
    """What an artifact record says of a .tflite file made elsewhere (uploaded, or Vertex
    AI's export), as the checks read it."""
    return {
        "input": {
            "name": "image",
            "shape": [1, facts.input_size, facts.input_size, 3],
            "dtype": facts.input_dtype,
        },
        "outputs": list(facts.output_names),
        "labels": list(facts.labels),
        "inputSize": facts.input_size,
    }


def _add_uploaded_version(
    session: Session, blobs: BlobStore, model: Model, data: bytes, max_bytes: int
) -> ModelVersion:
    # Imported here: the interpreter loads only where a file is checked.
    from app.detector.tflite_check import TfliteRejected, inspect_tflite

    sha256 = hashlib.sha256(data).hexdigest()
    stored = StoredFile(key=uploaded_key(model.id, sha256), sha256=sha256, size_bytes=len(data))
    blobs.put(stored.key, data, content_type="application/octet-stream")
    version = add_version(session, model=model, training_job_id=None, weights=stored, format=TFLITE)
    try:
        facts = inspect_tflite(data, max_bytes=max_bytes)
    except TfliteRejected as exc:
        # INVALID_ARGUMENT, as Firebase ML reports a file it cannot use.
        model.validation_error = {"code": 3, "message": f"{exc.message} ({exc.code})"}
        return version
    model.validation_error = None
    model.labels = list(facts.labels)
    model.input_size = facts.input_size
    add_artifact(
        session,
        version=version,
        format=TFLITE,
        stored=stored,
        details={**tflite_details(facts), "uploaded": True},
    )
    return version


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
    if version.format != PYTORCH and export_in.format != version.format:
        raise FailedPrecondition(
            f"version {version.version} of {model_id!r} was uploaded as {version.format}; "
            "only models trained here can be converted to other formats"
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
        resource_name=resource_name(model_id),
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

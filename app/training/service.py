"""Rules for training jobs: validate, freeze the dataset, queue, read, cancel.

A training job trains on a snapshot of its dataset taken when it was created (the labelled
images, their boxes and splits, the label list), written to the blob store in the same
request that queues the job: editing the dataset later changes nothing for the job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.datasets import service as datasets_service
from app.db.dataset_image import Split
from app.db.job import Job, JobState
from app.db.model_version import ModelVersion
from app.db.training_job import Backend, Phase, TrainingJob
from app.detector.spec import resolve_model_type
from app.errors import FailedPrecondition, InvalidInput, NotFound
from app.jobs import service as jobs_service
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.registry import service as registry_service
from app.training import backends, repository
from app.training.schemas import (
    MAX_BUDGET_MILLI_NODE_HOURS,
    MIN_BUDGET_MILLI_NODE_HOURS,
    TrainingJobCreate,
)

TRAIN_KIND = "training.train"
POLL_KIND = "training.poll_remote"
SNAPSHOT_FORMAT = "edge-automl-training-snapshot/1"


# -- storage layout ----------------------------------------------------------------------


def snapshot_key(training_job_id: str) -> str:
    return f"training/{training_job_id}/snapshot.json"


def checkpoint_key(training_job_id: str) -> str:
    return f"training/{training_job_id}/checkpoint.pt"


def model_id_for(training_job_id: str) -> str:
    """The id the job's model gets. Fixed per job, so a retried attempt writes the model
    file under the same key instead of leaving the first attempt's behind."""
    return hashlib.sha256(f"model:{training_job_id}".encode()).hexdigest()[:32]


def evaluation_id_for(training_job_id: str) -> str:
    return hashlib.sha256(f"evaluation:{training_job_id}".encode()).hexdigest()[:32]


def discard_blobs(blobs: BlobStore, *, training_job_id: str) -> None:
    """Delete everything a job that did not succeed stored: snapshot, checkpoint, model files."""
    for prefix in (
        f"training/{training_job_id}/",
        registry_service.model_prefix(model_id_for(training_job_id)),
    ):
        for info in list(blobs.list(prefix)):
            blobs.delete(info.key)


# -- the snapshot ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    labels: list[str]
    images: list[dict[str, Any]]
    base_model: dict[str, Any] | None

    def count(self, split: Split) -> int:
        return sum(1 for image in self.images if image["split"] == split.value)

    def to_json(self, *, training_job_id: str, dataset_id: str) -> bytes:
        return json.dumps(
            {
                "format": SNAPSHOT_FORMAT,
                "trainingJobId": training_job_id,
                "datasetId": dataset_id,
                "createTime": utcnow().isoformat(),
                "labels": self.labels,
                "baseModel": self.base_model,
                "images": self.images,
            },
            separators=(",", ":"),
        ).encode()


def _freeze(session: Session, *, dataset_id: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The labelled images with their boxes (label names not yet indexed), and the labels.

    Every image has a split: the import or upload assigned one (80/10/10 by content hash)
    where the source gave none, the same split the stats and readiness checks count.
    """
    images: list[dict[str, Any]] = []
    labels: set[str] = set()
    for dataset_image, image, boxes in datasets_service.labelled_images(
        session, dataset_id=dataset_id
    ):
        images.append(
            {
                "id": dataset_image.id,
                "imageId": image.id,
                "blobKey": image.blob_key,
                "width": image.width,
                "height": image.height,
                "split": dataset_image.split,
                "boxes": [[b.label, b.x_min, b.y_min, b.x_max, b.y_max] for b in boxes],
            }
        )
        labels.update(b.label for b in boxes)
    # Sorted here, not by the database: collations differ between SQLite and PostgreSQL.
    return sorted(labels), images


def _indexed(images: list[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    index = {label: i for i, label in enumerate(labels)}
    return [
        {**image, "boxes": [[index[box[0]], *box[1:]] for box in image["boxes"]]}
        for image in images
    ]


def label_difference(base: Sequence[str], dataset: Sequence[str]) -> str:
    only_base = sorted(set(base) - set(dataset))
    only_dataset = sorted(set(dataset) - set(base))
    parts = []
    if only_base:
        parts.append(f"only the base model has {only_base}")
    if only_dataset:
        parts.append(f"only the dataset has {only_dataset}")
    return "; ".join(parts)


# -- create ------------------------------------------------------------------------------


def _model_type(name: str) -> str:
    try:
        return resolve_model_type(name.strip()).value
    except ValueError as exc:
        raise InvalidInput.field("modelType", str(exc)) from None


def _check_budget(budget: int) -> None:
    if not MIN_BUDGET_MILLI_NODE_HOURS <= budget <= MAX_BUDGET_MILLI_NODE_HOURS:
        raise InvalidInput.field(
            "budgetMilliNodeHours",
            f"{budget} is out of range: must be between {MIN_BUDGET_MILLI_NODE_HOURS} and "
            f"{MAX_BUDGET_MILLI_NODE_HOURS} (1,000 = one hour of training)",
        )


def _base_model_file(backend: str, version: ModelVersion) -> None:
    """Refuse a base model the backend cannot start from: Vertex AI uptrains only a model it
    trained; this project's trainer (local, vertex-custom) starts only from its own weights."""
    if backend == Backend.VERTEX_AUTOML and version.remote_model_name is None:
        raise InvalidInput.field(
            "baseModelId",
            "vertex-automl can only start from a model Vertex AI trained (uptrainBaseModelId); "
            "this one was not",
        )
    if backend != Backend.VERTEX_AUTOML and version.format != registry_service.PYTORCH:
        raise InvalidInput.field(
            "baseModelId",
            f"the {backend} backend starts from this project's own trained weights; the base "
            f"model's latest version is a {version.format} file",
        )


def create(
    session: Session, blobs: BlobStore, settings: Settings, *, job_in: TrainingJobCreate
) -> TrainingJob:
    """Validate, snapshot the dataset and queue the training, all in the caller's transaction."""
    display_name = job_in.display_name.strip()
    if not display_name:
        raise InvalidInput.field("displayName", "must not be blank")
    backend = job_in.backend or settings.training_backend
    backends.check_configured(backend, settings)
    model_type = _model_type(job_in.model_type)
    _check_budget(job_in.budget_milli_node_hours)
    # Locked: the dataset cannot be deleted between this snapshot and the commit.
    dataset = datasets_service.get(session, dataset_id=job_in.dataset_id, for_update=True)

    base_model: dict[str, Any] | None = None
    base_labels: list[str] | None = None
    if job_in.base_model_id is not None:
        model = registry_service.get(session, model_id=job_in.base_model_id)
        if model.model_type != model_type:
            raise InvalidInput.field(
                "modelType",
                f"{model_type} differs from the base model's {model.model_type}; incremental "
                "training keeps the architecture",
            )
        version = registry_service.latest_version(session, model_id=model.id)
        _base_model_file(backend, version)
        base_labels = list(model.labels)
        base_model = {
            "id": model.id,
            "version": version.version,
            "weightsBlobKey": version.weights_blob_key,
            "sha256": version.weights_sha256,
            "format": version.format,
            "remoteModelName": version.remote_model_name,
        }

    datasets_service.check_trainable(session, dataset_id=dataset.id)
    labels, images = _freeze(session, dataset_id=dataset.id)
    if base_labels is not None:
        if set(base_labels) != set(labels):
            raise InvalidInput.field(
                "baseModelId",
                f"the base model's labels differ from the dataset's: "
                f"{label_difference(base_labels, labels)}",
            )
        labels = base_labels  # the base model's order, so class ids keep their meaning
    snapshot = Snapshot(labels=labels, images=_indexed(images, labels), base_model=base_model)

    training_job_id = new_id()
    job = jobs_service.enqueue(
        session,
        kind=TRAIN_KIND,
        payload={"trainingJobId": training_job_id},
        description=f"train {display_name[:100]}",
    )
    key = snapshot_key(training_job_id)
    now = utcnow()
    training_job = repository.add(
        session,
        TrainingJob(
            id=training_job_id,
            display_name=display_name,
            dataset_id=dataset.id,
            model_type=model_type,
            budget_milli_node_hours=job_in.budget_milli_node_hours,
            disable_early_stopping=job_in.disable_early_stopping,
            base_model_id=job_in.base_model_id,
            seed=job_in.seed,
            job_id=job.id,
            snapshot_blob_key=key,
            labels=labels,
            train_image_count=snapshot.count(Split.TRAIN),
            validation_image_count=snapshot.count(Split.VALIDATION),
            test_image_count=snapshot.count(Split.TEST),
            progress=None,
            backend=backend,
            remote={},
            phase=None if backend == Backend.LOCAL else Phase.SUBMITTING,
            poll_failures=0,
            created_at=now,
            updated_at=now,
        ),
    )
    # Written before the commit: a job row never exists without its snapshot.
    blobs.put(
        key,
        snapshot.to_json(training_job_id=training_job_id, dataset_id=dataset.id),
        content_type="application/json",
    )
    return training_job


# -- read --------------------------------------------------------------------------------


def get(session: Session, *, training_job_id: str) -> tuple[TrainingJob, Job]:
    found = (
        repository.get_with_job(session, training_job_id) if is_valid_id(training_job_id) else None
    )
    if found is None:
        raise NotFound(f"training job {training_job_id!r} not found")
    return found


def list_training_jobs(
    session: Session,
    *,
    page_size: int,
    after: PageCursor | None,
    states: Sequence[str] = (),
    dataset_id: str | None = None,
) -> tuple[list[tuple[TrainingJob, Job]], PageCursor | None]:
    rows = repository.list_page(
        session, limit=page_size + 1, after=after, states=states, dataset_id=dataset_id
    )
    if len(rows) <= page_size:
        return list(rows), None
    last = rows[page_size - 1][0]
    return list(rows[:page_size]), PageCursor(time=last.created_at, id=last.id)


# -- cancel ------------------------------------------------------------------------------


def cancel(session: Session, blobs: BlobStore, *, training_job_id: str) -> tuple[TrainingJob, Job]:
    """Cancel a job: a queued one at once (its snapshot is deleted), a running one at its
    next training step (the worker then deletes what it stored), a remote one through the
    poller (it cancels the remote run and waits for its terminal state). Cancelling a
    finished job is a FAILED_PRECONDITION, as in Vertex AI."""
    training_job, job = get(session, training_job_id=training_job_id)
    state = JobState(job.state)
    if state.is_terminal and state != JobState.CANCELLED:
        raise FailedPrecondition(
            f"training job {training_job_id!r} already finished as {state.value}"
        )
    job = jobs_service.cancel(session, job_id=training_job.job_id)
    if job.state == JobState.CANCELLED:
        # No worker will run it again (a queued cancel never reaches the task).
        discard_blobs(blobs, training_job_id=training_job.id)
    return training_job, job

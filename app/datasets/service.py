"""Rules for datasets: create, browse, label, import, stats, readiness, export."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy.orm import Session

from app.config import Settings
from app.datasets import repository
from app.datasets.formats import Box as IndexBox
from app.datasets.formats import (
    ExportImage,
    MlUse,
    validate_box,
    validate_label,
    write_csv,
    write_jsonl,
)
from app.datasets.images import ImageInfo, ImageRejected, inspect_image, make_thumbnail
from app.datasets.repository import DatasetCounts, ImageFilter
from app.datasets.schemas import (
    BoxIn,
    DatasetCreate,
    DatasetUpdate,
    ImportUris,
    UploadError,
)
from app.db.box import Box
from app.db.dataset import Dataset
from app.db.dataset_image import DatasetImage, Split
from app.db.image import Image
from app.errors import FailedPrecondition, InvalidInput, NotFound
from app.jobs import service as jobs_service
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import is_valid_id, new_id
from app.kit.pagination import PageCursor
from app.training import repository as training_repository

IMPORT_KIND = "datasets.import"
COLLECT_ORPHANS_KIND = "datasets.collect_orphans"
THUMBNAIL_SIDE = 256


# -- storage layout ----------------------------------------------------------------------


def image_key(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}"


def thumbnail_key(sha256: str) -> str:
    return f"thumbnails/{sha256[:2]}/{sha256}"


def upload_key(job_id: str) -> str:
    return f"imports/{job_id}/upload"


def assigned_split(sha256: str, *, seed: int) -> Split:
    """The deterministic 80/10/10 split of an image without ML_USE, by its content."""
    bucket = int(hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()[:8], 16) % 100
    if bucket < 80:
        return Split.TRAIN
    return Split.VALIDATION if bucket < 90 else Split.TEST


def store_image_bytes(
    blobs: BlobStore, data: bytes, info: ImageInfo, *, durable: bool = True
) -> tuple[str, bool]:
    """Store image bytes once under their hash; (key, whether this call wrote them)."""
    key = image_key(info.sha256)
    if blobs.exists(key):
        return key, False
    # No content type: the images row keeps it, and the local store would spend a second
    # file (and fsync) per image on it.
    blobs.put(key, data, durable=durable)
    return key, True


def image_row(info: ImageInfo, *, key: str, job_id: str | None) -> dict[str, Any]:
    return {
        "id": new_id(),
        "sha256": info.sha256,
        "blob_key": key,
        "width": info.width,
        "height": info.height,
        "format": info.format,
        "mime_type": info.mime_type,
        "size_bytes": info.size_bytes,
        "created_by_job_id": job_id,
        "created_at": utcnow(),
    }


# -- datasets ----------------------------------------------------------------------------


def create(session: Session, *, dataset_in: DatasetCreate) -> Dataset:
    now = utcnow()
    dataset = Dataset(
        id=new_id(),
        display_name=dataset_in.display_name.strip(),
        description=dataset_in.description,
        created_at=now,
        updated_at=now,
    )
    if not dataset.display_name:
        raise InvalidInput.field("displayName", "must not be blank")
    return repository.add(session, dataset)


def get(session: Session, *, dataset_id: str, for_update: bool = False) -> Dataset:
    """The dataset or NotFound; ``for_update`` locks it (training snapshots against deletion)."""
    dataset = (
        repository.get(session, dataset_id, for_update=for_update)
        if is_valid_id(dataset_id)
        else None
    )
    if dataset is None:
        raise NotFound(f"dataset {dataset_id!r} not found")
    return dataset


def counts(session: Session, datasets: Sequence[Dataset]) -> dict[str, DatasetCounts]:
    return repository.counts(session, [d.id for d in datasets])


def list_datasets(
    session: Session, *, page_size: int, after: PageCursor | None
) -> tuple[Sequence[Dataset], PageCursor | None]:
    rows = repository.list_page(session, limit=page_size + 1, after=after)
    if len(rows) <= page_size:
        return rows, None
    last = rows[page_size - 1]
    return rows[:page_size], PageCursor(time=last.created_at, id=last.id)


def update(session: Session, *, dataset_id: str, dataset_in: DatasetUpdate) -> Dataset:
    dataset = get(session, dataset_id=dataset_id)
    if dataset_in.display_name is not None:
        if not dataset_in.display_name.strip():
            raise InvalidInput.field("displayName", "must not be blank")
        dataset.display_name = dataset_in.display_name.strip()
    if dataset_in.description is not None:
        dataset.description = dataset_in.description
    dataset.updated_at = utcnow()
    session.flush()
    return dataset


def delete(session: Session, *, dataset_id: str) -> None:
    """Delete a dataset; its images' blobs go once no other dataset refers to them.

    The rows go now; a job removes the orphaned blobs after this transaction commits, so
    a failed commit can never leave rows pointing at deleted files. A dataset that a queued
    or running training job reads is refused: that job's snapshot names its image files.
    """
    # Locked first, so a training job created concurrently either sees no dataset or is seen.
    dataset = get(session, dataset_id=dataset_id, for_update=True)
    active = training_repository.active_for_dataset(session, dataset_id)
    if active is not None:
        raise FailedPrecondition(
            f"dataset {dataset_id!r} is being trained on by training job {active!r}: "
            "wait for it to finish or cancel it first"
        )
    repository.delete_dataset(session, dataset)
    jobs_service.enqueue(session, kind=COLLECT_ORPHANS_KIND, description="blob clean-up")


def collect_orphans(
    session: Session, blobs: BlobStore, *, created_by_job_id: str | None = None
) -> int:
    """Delete images no dataset refers to, with their blobs and thumbnails."""
    orphans = repository.orphan_images(session, created_by_job_id=created_by_job_id)
    for image in orphans:
        blobs.delete(image.blob_key)
        blobs.delete(thumbnail_key(image.sha256))
    repository.delete_images(session, [image.id for image in orphans])
    return len(orphans)


# -- import ------------------------------------------------------------------------------


def start_import_upload(
    session: Session,
    blobs: BlobStore,
    *,
    dataset_id: str,
    upload: BinaryIO,
    filename: str,
    strict: bool,
) -> str:
    """Stage an uploaded CSV, JSONL or zip and queue its import; the operation's id."""
    get(session, dataset_id=dataset_id)
    job = jobs_service.enqueue(
        session,
        kind=IMPORT_KIND,
        payload={
            "datasetId": dataset_id,
            "upload": True,
            "filename": filename[:200],
            "strict": strict,
        },
        description=f"import {filename[:200]}",
    )
    blobs.put(upload_key(job.id), upload)
    return job.id


def start_import_uris(session: Session, *, dataset_id: str, request: ImportUris) -> str:
    """Queue an import of index files (CSV, JSONL) or zips named by URI; the operation's id."""
    get(session, dataset_id=dataset_id)
    uris = [uri.strip() for uri in request.uris]
    for index, uri in enumerate(uris):
        if not uri:
            raise InvalidInput.field(f"uris[{index}]", "must not be empty")
        if uri.startswith("http://"):
            raise InvalidInput.field(f"uris[{index}]", "http:// is not allowed; use https://")
    job = jobs_service.enqueue(
        session,
        kind=IMPORT_KIND,
        payload={"datasetId": dataset_id, "uris": uris, "strict": request.strict},
        description=f"import {len(uris)} file(s)",
    )
    return job.id


# -- images ------------------------------------------------------------------------------


def list_images(
    session: Session,
    *,
    dataset_id: str,
    page_size: int,
    after: PageCursor | None,
    filters: ImageFilter,
) -> tuple[list[tuple[DatasetImage, Image, int]], PageCursor | None]:
    get(session, dataset_id=dataset_id)
    rows = repository.list_dataset_images(
        session, dataset_id=dataset_id, limit=page_size + 1, after=after, filters=filters
    )
    if len(rows) <= page_size:
        return list(rows), None
    last = rows[page_size - 1][0]
    return list(rows[:page_size]), PageCursor(time=last.created_at, id=last.id)


def get_image(session: Session, *, dataset_id: str, image_id: str) -> tuple[DatasetImage, Image]:
    found = (
        repository.get_dataset_image(session, dataset_id=dataset_id, dataset_image_id=image_id)
        if is_valid_id(image_id)
        else None
    )
    if found is None:
        get(session, dataset_id=dataset_id)
        raise NotFound(f"image {image_id!r} not found in dataset {dataset_id!r}")
    return found


def boxes_of(session: Session, *, dataset_image_id: str) -> Sequence[Box]:
    return repository.boxes_of(session, dataset_image_id)


def thumbnail(
    session: Session, blobs: BlobStore, *, dataset_id: str, image_id: str
) -> tuple[bytes, str]:
    """A thumbnail (longest side 256), made once and kept in the blob store."""
    _, image = get_image(session, dataset_id=dataset_id, image_id=image_id)
    key = thumbnail_key(image.sha256)
    if blobs.exists(key):
        return blobs.get(key), blobs.stat(key).content_type or "image/jpeg"
    data, mime = make_thumbnail(blobs.get(image.blob_key), max_side=THUMBNAIL_SIDE)
    blobs.put(key, data, content_type=mime)
    return data, mime


def _checked_boxes(boxes: Sequence[BoxIn], *, max_boxes: int) -> list[dict[str, Any]]:
    if len(boxes) > max_boxes:
        raise InvalidInput.field("boxes", f"{len(boxes)} boxes; at most {max_boxes} per image")
    checked = []
    for index, box in enumerate(boxes):
        try:
            label = validate_label(box.label)
        except ValueError as exc:
            raise InvalidInput.field(f"boxes[{index}].label", str(exc)) from None
        try:
            x_min, y_min, x_max, y_max = validate_box(box.x_min, box.y_min, box.x_max, box.y_max)
        except ValueError as exc:
            raise InvalidInput.field(f"boxes[{index}]", str(exc)) from None
        checked.append(
            {"label": label, "x_min": x_min, "y_min": y_min, "x_max": x_max, "y_max": y_max}
        )
    return checked


def replace_annotations(
    session: Session,
    settings: Settings,
    *,
    dataset_id: str,
    image_id: str,
    boxes: Sequence[BoxIn],
) -> tuple[DatasetImage, Image]:
    """Replace all boxes of one image; an empty list marks it a reviewed negative."""
    dataset_image, image = get_image(session, dataset_id=dataset_id, image_id=image_id)
    checked = _checked_boxes(boxes, max_boxes=settings.max_boxes_per_image)
    new_labels = {box["label"] for box in checked} - set(repository.labels_of(session, dataset_id))
    if (
        new_labels
        and len(repository.labels_of(session, dataset_id)) + len(new_labels) > settings.max_labels
    ):
        raise InvalidInput.field(
            "boxes", f"a dataset may have at most {settings.max_labels} labels"
        )
    repository.replace_boxes(
        session, dataset_id=dataset_id, dataset_image_id=dataset_image.id, boxes=checked
    )
    dataset_image.labeled = True
    dataset_image.updated_at = utcnow()
    repository.touch_dataset(session, dataset_id, dataset_image.updated_at)
    session.flush()
    return dataset_image, image


def update_image(
    session: Session, *, dataset_id: str, image_id: str, split: Split | None
) -> tuple[DatasetImage, Image]:
    dataset_image, image = get_image(session, dataset_id=dataset_id, image_id=image_id)
    if split is not None:
        dataset_image.split = split
        dataset_image.split_assigned = False
    dataset_image.updated_at = utcnow()
    session.flush()
    return dataset_image, image


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    data: bytes


def upload_images(
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    *,
    dataset_id: str,
    files: Sequence[UploadedFile],
) -> tuple[list[tuple[DatasetImage, Image]], list[UploadError]]:
    """Add unlabelled images; each bad file is reported by name and the rest are kept."""
    get(session, dataset_id=dataset_id)
    added: list[tuple[DatasetImage, Image]] = []
    errors: list[UploadError] = []
    for upload in files:
        try:
            info = inspect_image(
                upload.data,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
            )
        except ImageRejected as exc:
            errors.append(UploadError(file=upload.filename, message=str(exc)))
            continue
        key, _ = store_image_bytes(blobs, upload.data, info)
        repository.insert_images(session, [image_row(info, key=key, job_id=None)])
        image_id = repository.image_ids_by_sha(session, [info.sha256])[info.sha256]
        dataset_image = repository.find_dataset_image(
            session, dataset_id=dataset_id, image_id=image_id
        )
        if dataset_image is None:
            now = utcnow()
            dataset_image = repository.add_dataset_image(
                session,
                DatasetImage(
                    id=new_id(),
                    dataset_id=dataset_id,
                    image_id=image_id,
                    split=assigned_split(info.sha256, seed=settings.split_seed),
                    split_assigned=True,
                    labeled=False,
                    source_uri=f"upload:{upload.filename}",
                    created_at=now,
                    updated_at=now,
                ),
            )
        image = repository.get_image(session, image_id)
        assert image is not None
        added.append((dataset_image, image))
    if files and not added:
        raise InvalidInput(
            "no image could be added: "
            + "; ".join(f"{error.file}: {error.message}" for error in errors)
        )
    return added, errors


# -- readiness ---------------------------------------------------------------------------


def check_trainable(session: Session, *, dataset_id: str) -> None:
    """Refuse, naming the problem, a dataset that training cannot use."""
    from app.datasets.stats import compute_stats

    stats = compute_stats(session, dataset_id=dataset_id)
    if not stats.trainable:
        blocking = [
            w.message
            for w in stats.warnings
            if w.code in {"NO_TRAIN_IMAGES", "SPLIT_WITHOUT_LABEL", "TOO_MANY_LABELS"}
        ]
        raise FailedPrecondition("dataset cannot be trained: " + "; ".join(blocking))


def labelled_images(
    session: Session, *, dataset_id: str
) -> Iterator[tuple[DatasetImage, Image, list[Box]]]:
    """Every labelled image of the dataset (negatives included) with its boxes, in a stable
    order; unlabelled images are left out."""
    for dataset_image, image, boxes in repository.iter_export(session, dataset_id):
        if dataset_image.labeled:
            yield dataset_image, image, boxes


def images_of(
    session: Session, *, dataset_id: str, split: Split | None = None
) -> Iterator[tuple[DatasetImage, Image]]:
    """Every image of the dataset, or of one split, labelled or not, in a stable order."""
    get(session, dataset_id=dataset_id)
    return repository.iter_images(session, dataset_id, split=split.value if split else None)


# -- export ----------------------------------------------------------------------------

ZIP_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "BMP": "bmp",
    "ICO": "ico",
    "WEBP": "webp",
}


def export_images(
    session: Session, *, dataset_id: str, uri_for: Callable[[Image], str]
) -> Iterator[ExportImage]:
    """The dataset as index entries; ``uri_for(image)`` says how each image is referenced."""
    get(session, dataset_id=dataset_id)
    for dataset_image, image, boxes in repository.iter_export(session, dataset_id):
        yield ExportImage(
            uri=uri_for(image),
            split=MlUse(dataset_image.split),
            boxes=tuple(
                IndexBox(label=b.label, x_min=b.x_min, y_min=b.y_min, x_max=b.x_max, y_max=b.y_max)
                for b in boxes
            ),
        )


def export_index(
    session: Session, blobs: BlobStore, *, dataset_id: str, format: Literal["csv", "jsonl"]
) -> Path:
    """An AutoML CSV or Vertex JSONL naming each image by its blob store URI, written to a
    temporary file (the caller removes it) so a large dataset never sits in memory."""
    images = export_images(session, dataset_id=dataset_id, uri_for=lambda i: blobs.uri(i.blob_key))
    path = _scratch_file(f".{format}")
    try:
        with path.open("w", encoding="utf-8", newline="") as out:
            (write_csv if format == "csv" else write_jsonl)(images, out)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _scratch_file(suffix: str) -> Path:
    handle, name = tempfile.mkstemp(suffix=suffix)
    os.close(handle)
    return Path(name)


def export_zip(session: Session, blobs: BlobStore, *, dataset_id: str) -> Path:
    """A zip of the images and a labels.csv naming them by their path inside it.

    Written to a temporary file (the caller removes it): archives of large datasets do not
    fit in memory.
    """
    members: dict[str, str] = {}

    def member_for(image: Image) -> str:
        name = f"images/{image.sha256}.{ZIP_EXTENSIONS.get(image.format, 'img')}"
        members[name] = image.blob_key
        return name

    index = io.StringIO()
    write_csv(export_images(session, dataset_id=dataset_id, uri_for=member_for), index)
    path = _scratch_file(".zip")
    try:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("labels.csv", index.getvalue())
            for member, key in members.items():
                with blobs.open(key) as source, archive.open(member, "w") as target:
                    shutil.copyfileobj(source, target, 1024 * 1024)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path

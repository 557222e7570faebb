"""Every query on datasets, images, dataset images, boxes and staged import rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.box import Box
from app.db.dataset import Dataset
from app.db.dataset_image import DatasetImage
from app.db.image import Image
from app.db.import_row import ImportRow
from app.kit.clock import utcnow
from app.kit.ids import new_id
from app.kit.pagination import PageCursor, newest_first

PAGE_ROWS = 500


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


# -- datasets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetCounts:
    image_count: int = 0
    labeled_image_count: int = 0
    box_count: int = 0
    labels: tuple[str, ...] = ()


def add(session: Session, dataset: Dataset) -> Dataset:
    session.add(dataset)
    session.flush()
    return dataset


def get(session: Session, dataset_id: str, *, for_update: bool = False) -> Dataset | None:
    """The dataset; ``for_update`` locks its row until the transaction ends (PostgreSQL)."""
    return session.get(Dataset, dataset_id, with_for_update=for_update or None)


def list_page(session: Session, *, limit: int, after: PageCursor | None) -> Sequence[Dataset]:
    query = newest_first(
        select(Dataset), time=Dataset.created_at, id=Dataset.id, after=after, limit=limit
    )
    return session.scalars(query).all()


def counts(session: Session, dataset_ids: Sequence[str]) -> dict[str, DatasetCounts]:
    """Image, labelled image and box counts and label names, for several datasets at once."""
    if not dataset_ids:
        return {}
    images = session.execute(
        select(
            DatasetImage.dataset_id,
            func.count(),
            func.sum(case((DatasetImage.labeled, 1), else_=0)),
        )
        .where(DatasetImage.dataset_id.in_(dataset_ids))
        .group_by(DatasetImage.dataset_id)
    ).all()
    boxes = session.execute(
        select(Box.dataset_id, Box.label, func.count())
        .where(Box.dataset_id.in_(dataset_ids))
        .group_by(Box.dataset_id, Box.label)
        .order_by(Box.dataset_id, Box.label)
    ).all()
    box_totals: dict[str, int] = {}
    labels: dict[str, list[str]] = {}
    for dataset_id, label, count in boxes:
        box_totals[dataset_id] = box_totals.get(dataset_id, 0) + count
        labels.setdefault(dataset_id, []).append(label)
    result = {
        dataset_id: DatasetCounts(
            image_count=total,
            labeled_image_count=int(labeled or 0),
            box_count=box_totals.get(dataset_id, 0),
            labels=tuple(labels.get(dataset_id, ())),
        )
        for dataset_id, total, labeled in images
    }
    return {dataset_id: result.get(dataset_id, DatasetCounts()) for dataset_id in dataset_ids}


def delete_dataset(session: Session, dataset: Dataset) -> None:
    # Explicit deletes rather than relying on ON DELETE CASCADE alone: SQLite enforces
    # foreign keys only per connection, and a bulk delete is one statement per table anyway.
    session.execute(delete(Box).where(Box.dataset_id == dataset.id))
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset.id))
    session.delete(dataset)
    session.flush()


# -- images ------------------------------------------------------------------------------


def image_ids_by_sha(session: Session, shas: Iterable[str]) -> dict[str, str]:
    shas = list(shas)
    if not shas:
        return {}
    rows = session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(shas))).all()
    return {sha: image_id for sha, image_id in rows}


def insert_images(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert image rows, skipping content that is already stored (same SHA-256)."""
    if rows:
        # Rows as parameters (executemany), not one giant VALUES statement compiled per batch.
        statement = _insert(session)(Image).on_conflict_do_nothing(index_elements=["sha256"])
        session.execute(statement, list(rows))


def get_image(session: Session, image_id: str) -> Image | None:
    return session.get(Image, image_id)


def orphan_images(session: Session, *, created_by_job_id: str | None = None) -> Sequence[Image]:
    """Images no dataset and no staged import refers to (optionally: brought by one job)."""
    query = select(Image).where(
        ~exists().where(DatasetImage.image_id == Image.id),
        ~exists().where(ImportRow.image_id == Image.id),
    )
    if created_by_job_id is not None:
        query = query.where(Image.created_by_job_id == created_by_job_id)
    return session.scalars(query).all()


def recorded_blob_keys(session: Session, keys: Iterable[str]) -> set[str]:
    keys = list(keys)
    if not keys:
        return set()
    return set(session.scalars(select(Image.blob_key).where(Image.blob_key.in_(keys))))


def delete_images(session: Session, image_ids: Sequence[str]) -> None:
    if image_ids:
        session.execute(delete(Image).where(Image.id.in_(image_ids)))


# -- dataset images ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFilter:
    split: str | None = None
    label: str | None = None
    labeled: bool | None = None
    negative: bool | None = None


def _box_count() -> Any:
    return (
        select(func.count())
        .where(Box.dataset_image_id == DatasetImage.id)
        .correlate(DatasetImage)
        .scalar_subquery()
    )


def list_dataset_images(
    session: Session,
    *,
    dataset_id: str,
    limit: int,
    after: PageCursor | None,
    filters: ImageFilter,
) -> Sequence[tuple[DatasetImage, Image, int]]:
    box_count = _box_count().label("box_count")
    query = newest_first(
        select(DatasetImage, Image, box_count)
        .join(Image, Image.id == DatasetImage.image_id)
        .where(DatasetImage.dataset_id == dataset_id),
        time=DatasetImage.created_at,
        id=DatasetImage.id,
        after=after,
        limit=limit,
    )
    if filters.split:
        query = query.where(DatasetImage.split == filters.split)
    if filters.labeled is not None:
        query = query.where(DatasetImage.labeled.is_(filters.labeled))
    has_boxes = exists().where(Box.dataset_image_id == DatasetImage.id)
    if filters.negative is True:
        query = query.where(DatasetImage.labeled.is_(True), ~has_boxes)
    elif filters.negative is False:
        query = query.where(or_(DatasetImage.labeled.is_(False), has_boxes))
    if filters.label:
        query = query.where(
            exists().where(Box.dataset_image_id == DatasetImage.id, Box.label == filters.label)
        )
    return [(di, image, count) for di, image, count in session.execute(query).all()]


def get_dataset_image(
    session: Session, *, dataset_id: str, dataset_image_id: str
) -> tuple[DatasetImage, Image] | None:
    row = session.execute(
        select(DatasetImage, Image)
        .join(Image, Image.id == DatasetImage.image_id)
        .where(DatasetImage.id == dataset_image_id, DatasetImage.dataset_id == dataset_id)
    ).first()
    return (row[0], row[1]) if row else None


def find_dataset_image(session: Session, *, dataset_id: str, image_id: str) -> DatasetImage | None:
    return session.scalars(
        select(DatasetImage).where(
            DatasetImage.dataset_id == dataset_id, DatasetImage.image_id == image_id
        )
    ).one_or_none()


def add_dataset_image(session: Session, dataset_image: DatasetImage) -> DatasetImage:
    session.add(dataset_image)
    session.flush()
    return dataset_image


def boxes_of(session: Session, dataset_image_id: str) -> Sequence[Box]:
    return session.scalars(
        select(Box).where(Box.dataset_image_id == dataset_image_id).order_by(Box.id)
    ).all()


def replace_boxes(
    session: Session, *, dataset_id: str, dataset_image_id: str, boxes: Sequence[dict[str, Any]]
) -> None:
    session.execute(delete(Box).where(Box.dataset_image_id == dataset_image_id))
    if boxes:
        rows = [
            {"dataset_id": dataset_id, "dataset_image_id": dataset_image_id, **box} for box in boxes
        ]
        session.execute(
            _insert(session)(Box)
            .values(rows)
            .on_conflict_do_nothing(
                index_elements=["dataset_image_id", "label", "x_min", "y_min", "x_max", "y_max"]
            )
        )


def labels_of(session: Session, dataset_id: str) -> list[str]:
    return list(
        session.scalars(
            select(Box.label).where(Box.dataset_id == dataset_id).distinct().order_by(Box.label)
        )
    )


def iter_images(
    session: Session, dataset_id: str, *, split: str | None = None
) -> Iterator[tuple[DatasetImage, Image]]:
    """Every image of a dataset, or of one split, labelled or not, in a stable order (by
    dataset image id), a page at a time."""
    last_id = ""
    while True:
        query = (
            select(DatasetImage, Image)
            .join(Image, Image.id == DatasetImage.image_id)
            .where(DatasetImage.dataset_id == dataset_id, DatasetImage.id > last_id)
            .order_by(DatasetImage.id)
            .limit(PAGE_ROWS)
        )
        if split is not None:
            query = query.where(DatasetImage.split == split)
        page = session.execute(query).all()
        if not page:
            return
        yield from ((dataset_image, image) for dataset_image, image in page)
        last_id = page[-1][0].id


def iter_export(
    session: Session, dataset_id: str
) -> Iterator[tuple[DatasetImage, Image, list[Box]]]:
    """Every image of a dataset with its boxes, in a stable order, a page at a time."""
    last_id = ""
    while True:
        page = session.execute(
            select(DatasetImage, Image)
            .join(Image, Image.id == DatasetImage.image_id)
            .where(DatasetImage.dataset_id == dataset_id, DatasetImage.id > last_id)
            .order_by(DatasetImage.id)
            .limit(PAGE_ROWS)
        ).all()
        if not page:
            return
        ids = [di.id for di, _ in page]
        boxes: dict[str, list[Box]] = {}
        for box in session.scalars(
            select(Box).where(Box.dataset_image_id.in_(ids)).order_by(Box.id)
        ):
            boxes.setdefault(box.dataset_image_id, []).append(box)
        for di, image in page:
            yield di, image, boxes.get(di.id, [])
        last_id = ids[-1]


# -- statistics --------------------------------------------------------------------------


def split_label_counts(session: Session, dataset_id: str) -> list[tuple[str, str, int, int]]:
    """(label, split, images with that label, boxes) for every label and split."""
    rows = session.execute(
        select(
            Box.label,
            DatasetImage.split,
            func.count(func.distinct(Box.dataset_image_id)),
            func.count(),
        )
        .join(DatasetImage, DatasetImage.id == Box.dataset_image_id)
        .where(Box.dataset_id == dataset_id)
        .group_by(Box.label, DatasetImage.split)
    ).all()
    return [(label, split, int(images), int(boxes)) for label, split, images, boxes in rows]


def image_state_counts(session: Session, dataset_id: str) -> list[tuple[str, bool, bool, int]]:
    """(split, labeled, has boxes, count) over the dataset's images."""
    has_boxes = exists().where(Box.dataset_image_id == DatasetImage.id)
    rows = session.execute(
        select(DatasetImage.split, DatasetImage.labeled, has_boxes.label("has_boxes"), func.count())
        .where(DatasetImage.dataset_id == dataset_id)
        .group_by(DatasetImage.split, DatasetImage.labeled, "has_boxes")
    ).all()
    return [(split, bool(labeled), bool(boxes), int(n)) for split, labeled, boxes, n in rows]


def box_geometry(session: Session, dataset_id: str) -> Iterator[tuple[float, float, float, float]]:
    """Relative width and height of every box, with the image's pixel size."""
    query = (
        select(
            Box.x_max - Box.x_min,
            Box.y_max - Box.y_min,
            Image.width,
            Image.height,
        )
        .join(DatasetImage, DatasetImage.id == Box.dataset_image_id)
        .join(Image, Image.id == DatasetImage.image_id)
        .where(Box.dataset_id == dataset_id)
    )
    for width, height, image_width, image_height in session.execute(
        query.execution_options(yield_per=5000)
    ):
        yield float(width), float(height), float(image_width), float(image_height)


# -- staged imports ----------------------------------------------------------------------


def stage_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(_insert(session)(ImportRow), list(rows))


def clear_staged(session: Session, job_id: str) -> None:
    session.execute(delete(ImportRow).where(ImportRow.job_id == job_id))


def publish_staged(session: Session, *, job_id: str, dataset_id: str) -> tuple[int, int, int]:
    """Move a job's staged rows into the dataset in one transaction.

    Images already in the dataset keep their id; an explicit split replaces one the
    service assigned; ``labeled`` only ever turns on. Duplicate boxes are merged by the
    unique constraint. Returns (images touched, of which unlabelled, boxes added).
    """
    per_image = session.execute(
        select(
            ImportRow.image_id,
            func.max(case((ImportRow.split_assigned.is_(False), ImportRow.split))),
            func.max(ImportRow.split),
            func.max(case((ImportRow.labeled, 1), else_=0)),
            func.min(ImportRow.source_uri),
        )
        .where(ImportRow.job_id == job_id)
        .group_by(ImportRow.image_id)
    ).all()
    now = utcnow()
    values = [
        {
            "id": new_id(),
            "dataset_id": dataset_id,
            "image_id": image_id,
            "split": explicit or assigned,
            "split_assigned": explicit is None,
            "labeled": bool(labeled),
            "source_uri": source_uri,
            "created_at": now,
            "updated_at": now,
        }
        for image_id, explicit, assigned, labeled, source_uri in per_image
    ]
    insert = _insert(session)
    if values:
        statement = insert(DatasetImage)
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=["dataset_id", "image_id"],
            set_={
                "split": case(
                    (excluded.split_assigned.is_(False), excluded.split),
                    else_=DatasetImage.split,
                ),
                "split_assigned": and_(DatasetImage.split_assigned, excluded.split_assigned),
                "labeled": or_(DatasetImage.labeled, excluded.labeled),
                "updated_at": excluded.updated_at,
            },
        )
        session.execute(statement, values)

    boxes = (
        insert(Box)
        .from_select(
            ["dataset_id", "dataset_image_id", "label", "x_min", "y_min", "x_max", "y_max"],
            select(
                DatasetImage.dataset_id,
                DatasetImage.id,
                ImportRow.label,
                ImportRow.x_min,
                ImportRow.y_min,
                ImportRow.x_max,
                ImportRow.y_max,
            )
            .join(
                DatasetImage,
                and_(
                    DatasetImage.image_id == ImportRow.image_id,
                    DatasetImage.dataset_id == dataset_id,
                ),
            )
            .where(ImportRow.job_id == job_id, ImportRow.label.is_not(None)),
        )
        .on_conflict_do_nothing(
            index_elements=["dataset_image_id", "label", "x_min", "y_min", "x_max", "y_max"]
        )
    )
    # Count rather than trust rowcount, which drivers report differently for INSERT ... SELECT
    # ... ON CONFLICT.
    before = box_total(session, dataset_id)
    session.execute(boxes)
    added = box_total(session, dataset_id) - before
    clear_staged(session, job_id)
    unlabeled = sum(1 for value in values if not value["labeled"])
    return len(values), unlabeled, added


def box_total(session: Session, dataset_id: str) -> int:
    return int(session.scalar(select(func.count()).where(Box.dataset_id == dataset_id)) or 0)


def touch_dataset(session: Session, dataset_id: str, when: datetime) -> None:
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(updated_at=when))

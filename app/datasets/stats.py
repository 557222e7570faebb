"""Dataset statistics and the readiness warnings AutoML users know.

The thresholds are the original service's: at least 10 images per label (100+
recommended), a most/least common label ratio of at most 100, box edges of at least 1% of
the image side.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy.orm import Session

from app.datasets import repository
from app.datasets.schemas import DatasetStats, LabelStats, ReadinessWarning, SplitCounts
from app.db.dataset_image import Split

MIN_IMAGES_PER_LABEL = 10
RECOMMENDED_IMAGES_PER_LABEL = 100
MAX_LABEL_RATIO = 100
MIN_BOX_SIDE = 0.01
AREA_QUANTILES = (0.0, 0.10, 0.25, 0.50, 0.75, 0.90, 1.0)


def _split_counts(by_split: dict[str, int]) -> SplitCounts:
    return SplitCounts(
        train=by_split.get(Split.TRAIN, 0),
        validation=by_split.get(Split.VALIDATION, 0),
        test=by_split.get(Split.TEST, 0),
    )


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values.sort()
    last = len(values) - 1
    return {f"q{round(q * 100)}": round(values[round(q * last)], 6) for q in AREA_QUANTILES}


def compute_stats(session: Session, *, dataset_id: str, max_labels: int = 1000) -> DatasetStats:
    images: dict[str, dict[str, int]] = defaultdict(dict)
    boxes: dict[str, dict[str, int]] = defaultdict(dict)
    for label, split, image_count, box_count in repository.split_label_counts(session, dataset_id):
        images[label][split] = image_count
        boxes[label][split] = box_count

    total = labeled = negative = 0
    by_split: dict[str, int] = defaultdict(int)
    labeled_train = 0
    for split, is_labeled, has_boxes, count in repository.image_state_counts(session, dataset_id):
        total += count
        by_split[split] += count
        if is_labeled:
            labeled += count
            negative += 0 if has_boxes else count
            labeled_train += count if split == Split.TRAIN else 0

    areas: list[float] = []
    small: dict[str, int] = defaultdict(int)
    for width, height, _, _ in repository.box_geometry(session, dataset_id):
        areas.append(width * height)
        if width < MIN_BOX_SIDE or height < MIN_BOX_SIDE:
            small["all"] += 1

    labels = sorted(images)
    warnings: list[ReadinessWarning] = []
    trainable = True
    if labeled_train == 0:
        trainable = False
        warnings.append(
            ReadinessWarning(
                code="NO_TRAIN_IMAGES",
                message="no labelled images in the TRAIN split: label some, or import with ML_USE",
            )
        )
    if len(labels) > max_labels:
        trainable = False
        warnings.append(
            ReadinessWarning(
                code="TOO_MANY_LABELS",
                message=f"{len(labels)} labels; at most {max_labels} are supported",
            )
        )
    image_totals = {label: sum(images[label].values()) for label in labels}
    for label in labels:
        if image_totals[label] < MIN_IMAGES_PER_LABEL:
            warnings.append(
                ReadinessWarning(
                    code="FEW_IMAGES",
                    label=label,
                    message=f"label {label!r} has {image_totals[label]} images; at least "
                    f"{MIN_IMAGES_PER_LABEL} are needed and {RECOMMENDED_IMAGES_PER_LABEL}+ "
                    "are recommended",
                )
            )
        for split in Split:
            if images[label].get(split, 0) == 0:
                if split == Split.TRAIN:
                    trainable = False
                warnings.append(
                    ReadinessWarning(
                        code="SPLIT_WITHOUT_LABEL",
                        label=label,
                        message=f"the {split.value} split has no images of label {label!r}",
                    )
                )
    if labels:
        most = max(labels, key=lambda name: image_totals[name])
        least = min(labels, key=lambda name: image_totals[name])
        if image_totals[most] > MAX_LABEL_RATIO * image_totals[least]:
            warnings.append(
                ReadinessWarning(
                    code="LABEL_IMBALANCE",
                    message=f"label {most!r} has {image_totals[most]} images and {least!r} only "
                    f"{image_totals[least]}: more than {MAX_LABEL_RATIO} times as many",
                )
            )
    if small["all"]:
        warnings.append(
            ReadinessWarning(
                code="SMALL_BOXES",
                message=f"{small['all']} boxes have an edge shorter than 1% of the image side; "
                "they are hard to learn",
            )
        )

    return DatasetStats(
        image_count=total,
        labeled_image_count=labeled,
        unlabeled_image_count=total - labeled,
        negative_image_count=negative,
        box_count=len(areas),
        images_by_split=_split_counts(by_split),
        labels=[
            LabelStats(
                label=label,
                images=_split_counts(images[label]),
                boxes=_split_counts(boxes[label]),
            )
            for label in labels
        ],
        box_area_quantiles=_quantiles(areas),
        warnings=warnings,
        trainable=trainable,
    )

"""Fixtures for evaluation tests: generated datasets, a worker, and registered evaluations."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from app.detector import matches, metrics
from app.detector.types import Evaluation as Scored
from app.evaluation import service
from app.kit.ids import new_id
from app.registry import service as registry_service
from tests.detector.test_metrics import random_case
from tests.registry.test_api import LABELS, register
from tests.training.conftest import make_dataset, run_jobs  # noqa: F401 - fixtures


@pytest.fixture
def settings(settings):
    """Models trained here stop after two epochs: the tests need a real file, not a good one."""
    return settings.model_copy(update={"training_max_epochs": 2, "training_progress_seconds": 0.0})


def scored_of(
    truths: list[metrics.ImageTruth], found: list[metrics.ImageDetections], image_ids: list[str]
) -> Scored:
    """An evaluation computed as the detector core computes it, from given records."""
    coco = metrics.coco_stats(truths, found, num_labels=len(LABELS))
    return Scored(
        vertex=metrics.vertex_metrics(truths, found, label_names=LABELS),
        coco=coco.as_dict(),
        coco_per_label={
            name: dict(zip(metrics.STAT_NAMES, map(float, coco.per_label[k]), strict=True))
            for k, name in enumerate(LABELS)
        },
        matches=matches.build(
            truths,
            found,
            label_names=LABELS,
            image_ids=image_ids,
            image_sizes=[(1000, 1000)] * len(truths),
        ),
        image_count=len(truths),
        box_count=sum(len(t.labels) for t in truths),
        detection_count=sum(len(d.labels) for d in found),
        seconds=0.01,
        inference_seconds=0.008,
        metric_seconds=0.002,
    )


def two_label_case(
    seeds: tuple[int, ...],
) -> tuple[list[metrics.ImageTruth], list[metrics.ImageDetections]]:
    """Random cases from the metrics tests, joined and folded onto two labels (circle and
    square)."""
    truths, found = [], []
    for seed in seeds:
        case_truths, case_found, _ = random_case(seed)
        truths += [metrics.ImageTruth(t.boxes, t.labels % 2) for t in case_truths]
        found += [metrics.ImageDetections(d.boxes, d.scores, d.labels % 2) for d in case_found]
    return truths, found


BASE_SEEDS = (13, 14, 28, 31, 33)
OTHER_SEEDS = (5, 9, 17, 24, 35)


def register_evaluation(
    client,
    session_factory,
    *,
    seeds: tuple[int, ...] = BASE_SEEDS,
    model_id: str | None = None,
) -> dict[str, Any]:
    """A model (or a given one) with an evaluation stored as the evaluation task stores it."""
    if model_id is None:
        model_id, _ = register(client, session_factory)
    truths, found = two_label_case(seeds)
    image_ids = [f"image{i}" for i in range(len(truths))]
    scored = scored_of(truths, found, image_ids)
    evaluation_id = new_id()
    blobs = client.app.state.blobs
    key = service.store_scored(blobs, model_id=model_id, evaluation_id=evaluation_id, scored=scored)
    with session_factory.begin() as session:
        version = registry_service.latest_version(session, model_id=model_id)
        service.add_evaluation(
            session,
            evaluation_id=evaluation_id,
            model_version=version,
            dataset_id="ds1",
            split="TEST",
            artifact=service.artifact_of(session, version, service.ARTIFACT_PYTORCH),
            metrics_blob_key=key,
            summary=service.EvaluationSummary.of(scored),
        )
    return {
        "modelId": model_id,
        "evaluationId": evaluation_id,
        "path": f"/v1/models/{model_id}/evaluations/{evaluation_id}",
        "scored": scored,
        "truths": truths,
        "found": found,
        "sha256": hashlib.sha256(b"model bytes").hexdigest(),
        "imageCount": len(truths),
    }

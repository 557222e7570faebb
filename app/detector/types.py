"""The data the detector core exchanges with its callers (plain values, no framework types)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from app.detector.matches import MatchTable

# Reads the encoded bytes (JPEG, PNG, ...) of an image given its sample key.
ReadImage = Callable[[str], bytes]

STOP_BUDGET_REACHED = "BUDGET_REACHED"
STOP_MODEL_CONVERGED = "MODEL_CONVERGED"


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``boxes`` (N, 4) normalized ``x_min, y_min, x_max, y_max`` in [0, 1],
    ``labels`` (N,) indices into the label list. An image without boxes is a negative."""

    key: str
    boxes: NDArray[np.float32]
    labels: NDArray[np.int64]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``budget_seconds`` is the wall-clock budget of the whole run, resumed
    attempts included; ``max_epochs`` caps the schedule (tests use it for short, exact runs)."""

    model_type: str
    labels: tuple[str, ...]
    budget_seconds: float
    disable_early_stopping: bool = False
    seed: int = 0
    max_epochs: int | None = None
    batch_size: int | None = None
    threads: int | None = None
    bf16: bool | None = None  # None: use bf16 autocast where this CPU supports it
    # Images evaluated after training (the TEST split): the run keeps time for them inside the
    # budget, at the inference speed it measures while validating.
    final_eval_images: int = 0
    loader_workers: int | None = None  # None: one background process when there are >2 cores
    device: str | None = None  # "cpu" or "cuda"; None: a CUDA GPU when there is one
    # NHWC tensors: about 5% more images/s with bf16 on this CPU (bench/train_throughput.py).
    channels_last: bool = True


@dataclass(frozen=True)
class Progress:
    """Where a run stands; handed to :class:`TrainHooks` after each step and each epoch."""

    epoch: int
    step: int
    fraction: float  # of the planned schedule, 0 to 1
    elapsed_seconds: float
    remaining_seconds: float
    losses: dict[str, float]
    images_per_second: float
    val_map50: float | None = None
    best_val_map50: float | None = None


class TrainHooks(Protocol):
    def on_step(self, progress: Progress) -> None:
        """After every optimizer step; may raise to stop the run (cancellation)."""

    def on_epoch(self, progress: Progress, checkpoint: bytes) -> None:
        """After every epoch with the state to resume from; store it durably."""


@dataclass(frozen=True)
class TrainResult:
    model: bytes  # a model file (see bundle.py): EMA weights, labels, model type, input size
    epochs: int
    steps: int
    stop_reason: str  # STOP_BUDGET_REACHED or STOP_MODEL_CONVERGED
    elapsed_seconds: float
    images_per_second: float
    data_wait_share: float  # share of step time spent waiting for the next batch
    best_val_map50: float | None
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


@dataclass(frozen=True)
class Detections:
    """Detections of one image: ``boxes`` (M, 4) normalized ``x_min, y_min, x_max, y_max``,
    ``scores`` and ``labels`` (M,), highest score first."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    labels: NDArray[np.int64]


@dataclass(frozen=True)
class Evaluation:
    """A model's evaluation on labelled samples.

    ``vertex`` is :func:`app.detector.metrics.vertex_metrics`' result (``metrics`` in the
    DESIGN.md §3.3 shape and per-label ``slices``); ``coco`` COCO's 12 summary figures overall
    and ``coco_per_label`` by label name (-1 where undefined); ``matches`` every detection's
    matches, from which any point of the confidence/IoU slider is read.
    """

    vertex: dict[str, Any]
    coco: dict[str, float]
    coco_per_label: dict[str, dict[str, float]]
    matches: MatchTable
    image_count: int
    box_count: int
    detection_count: int
    seconds: float
    inference_seconds: float  # reading, resizing and predicting the images
    metric_seconds: float  # matching and scoring

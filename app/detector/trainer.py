"""The training loop: budget-driven schedule, EMA, early stopping, checkpoints, resume.

The learning-rate schedule follows the *fraction of the run done*: the larger of the share of
the wall-clock budget spent and the share of the epoch cap trained. A run therefore always
reaches its cosine tail, where most of the gain comes (DESIGN.md §6.1), whether time or epochs
run out first. Every number that decides a batch is seeded by (seed, epoch, position), so a run
resumed from a checkpoint continues where it stopped, and a run capped by epochs (not time) is
reproducible to the bit.
"""

from __future__ import annotations

import copy
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from app.detector import evaluate as scoring
from app.detector.bundle import ModelBundle, load_bundle
from app.detector.data import ImageCache, TrainBatches, epoch_order, repeat_factors
from app.detector.loss import DetectionLoss, Targets
from app.detector.model import Detector, decode_boxes
from app.detector.spec import spec_for
from app.detector.types import (
    STOP_BUDGET_REACHED,
    STOP_MODEL_CONVERGED,
    Progress,
    ReadImage,
    Sample,
    TrainConfig,
    TrainHooks,
    TrainResult,
)

DEFAULT_BATCH_SIZE = 16
# The schedule's length when time does not run out first (the "converged" horizon).
DEFAULT_MAX_EPOCHS = 300
BASE_LR = 2e-3
# The neck and head start from random weights and learn at this multiple of the backbone's rate,
# which starts from ImageNet's: a single rate was either too slow for the new layers (small
# objects, unlike ImageNet's, suffered most) or too fast for the pretrained features (README, "The
# detector", has the measurements).
NEW_LAYERS_LR_SCALE = 4.0
MIN_LR_SHARE = 0.05
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 50
GRAD_CLIP = 10.0
# Early stopping: no better validation fitness for this share of the planned epochs (at least
# MIN_PATIENCE epochs), once the run is this far along.
PATIENCE_SHARE = 0.25
MIN_PATIENCE = 15
EARLY_STOP_AFTER = 0.5
# Share of training images made as mosaics, until this fraction of the run.
MOSAIC = 0.5
MOSAIC_UNTIL = 0.85
# Validation every epoch near the end; earlier, only when it costs under 1/VALIDATION_RATIO of
# the training time since the last one.
VALIDATE_EVERY_EPOCH_AFTER = 0.7
VALIDATION_RATIO = 10.0
# /2: four optimizer parameter groups (per-group learning rates); /1 had two.
CHECKPOINT_FORMAT = "edge-automl-checkpoint/2"
# Reading and decoding one image again for the final evaluation (a generous estimate).
_DECODE_SECONDS = 0.02


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX), where autocast pays off."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def fitness(coco: dict[str, float]) -> float:
    """One number to rank epochs: mostly AP@[.5:.95], a little AP50 (less noisy on few images)."""
    return 0.9 * max(coco["AP"], 0.0) + 0.1 * max(coco["AP50"], 0.0)


class ModelEMA:
    """Exponential moving average of the weights, with a warm-up ramp on the decay."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        source = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(source[name].detach(), alpha=1 - decay)
            else:
                value.copy_(source[name])


@dataclass
class RunState:
    """Everything a checkpoint carries besides the weights and the optimizer."""

    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed: float = 0.0  # wall-clock seconds spent by all attempts so far
    schedule_start: float | None = None  # elapsed seconds when the first step ran
    best_fitness: float = -1.0
    best_epoch: int = 0
    best_val_map50: float | None = None
    last_val_map50: float | None = None
    images_seen: int = 0
    train_seconds: float = 0.0
    wait_seconds: float = 0.0
    eval_seconds_per_image: float = 0.05
    last_validation_elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int | None = None


def _parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = parameter.ndim > 1 and not name.endswith(".bias")
        groups.setdefault((name.startswith("backbone."), decays), []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": WEIGHT_DECAY if decays else 0.0,
            "lr_scale": 1.0 if pretrained else NEW_LAYERS_LR_SCALE,
        }
        for (pretrained, decays), params in sorted(groups.items())
    ]


def _learning_rate(step: int, fraction: float) -> float:
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    cosine = MIN_LR_SHARE + (1 - MIN_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
    return BASE_LR * cosine * (0.1 + 0.9 * warmup)


def _to_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class _Run:
    def __init__(
        self,
        config: TrainConfig,
        train_samples: Sequence[Sample],
        val_samples: Sequence[Sample],
        read_image: ReadImage,
        hooks: TrainHooks | None,
    ) -> None:
        self.clock_start = time.monotonic()
        self.config = config
        self.spec = spec_for(config.model_type)
        self.train_samples, self.val_samples = list(train_samples), list(val_samples)
        self.hooks = hooks
        self.state = RunState()
        self.device = torch.device(
            config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        native_bf16 = self.device.type == "cuda" or bf16_supported()
        self.bf16 = native_bf16 if config.bf16 is None else config.bf16
        self.batch_size = min(config.batch_size or DEFAULT_BATCH_SIZE, len(self.train_samples))
        self.max_epochs = config.max_epochs or DEFAULT_MAX_EPOCHS
        cores = os.cpu_count() or 1
        self.loader_workers = (
            config.loader_workers if config.loader_workers is not None else int(cores > 2)
        )
        torch.set_num_threads(config.threads or cores)
        torch.manual_seed(config.seed)
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.model = Detector(self.spec, len(config.labels), pretrained=True).to(self.device)
        self.model.to(memory_format=self.memory_format)
        self.loss = DetectionLoss()
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.model), lr=BASE_LR)
        self.ema = ModelEMA(self.model, decay=0.99)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.cache = ImageCache(
            self.train_samples + self.val_samples, read_image, self.spec.input_size
        )
        self.factors = repeat_factors(self.train_samples, len(config.labels))
        self.step_seconds = 0.0  # running estimate of one step, data included

    # -- time --------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.state.elapsed + (time.monotonic() - self.clock_start)

    def reserve(self) -> float:
        """Seconds kept for the final validation, the TEST evaluation and saving."""
        images = self.config.final_eval_images + len(self.val_samples)
        return 5.0 + 2.0 * images * (self.state.eval_seconds_per_image + _DECODE_SECONDS)

    def fraction(self) -> float:
        steps_per_epoch = max(1, len(self.factors) // self.batch_size)
        by_epochs = self.state.step / (self.max_epochs * steps_per_epoch)
        start = self.state.schedule_start or 0.0
        usable = self.config.budget_seconds - self.reserve() - start
        by_time = (self.elapsed() - start) / usable if usable > 0 else 1.0
        return min(1.0, max(by_epochs, by_time))

    def out_of_time(self) -> bool:
        left = self.config.budget_seconds - self.reserve() - self.elapsed()
        return left < 1.5 * self.step_seconds

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> bytes:
        self.state.elapsed = self.elapsed()
        self.clock_start = time.monotonic()
        return _to_bytes(
            {
                "format": CHECKPOINT_FORMAT,
                "model_type": str(self.spec.model_type),
                "labels": list(self.config.labels),
                "model": self.model.state_dict(),
                "ema": self.ema.model.state_dict(),
                "ema_updates": self.ema.updates,
                "optimizer": self.optimizer.state_dict(),
                "best": self.best_state,
                "state": self.state.__dict__,
            }
        )

    def restore(self, data: bytes) -> None:
        raw = torch.load(io.BytesIO(data), map_location=self.device, weights_only=False)
        if raw.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"the checkpoint's format {raw.get('format')!r} is not {CHECKPOINT_FORMAT!r}"
            )
        if raw["model_type"] != str(self.spec.model_type) or raw["labels"] != list(
            self.config.labels
        ):
            raise ValueError("the checkpoint belongs to a run with another model type or labels")
        self.model.load_state_dict(raw["model"])
        self.ema.model.load_state_dict(raw["ema"])
        self.ema.updates = raw["ema_updates"]
        self.optimizer.load_state_dict(raw["optimizer"])
        self.best_state = raw["best"]
        self.state = RunState(**raw["state"])
        self.state.resumed_from_epoch = self.state.epoch
        self.clock_start = time.monotonic()

    def start_from(self, base_model: bytes) -> None:
        bundle = load_bundle(base_model)
        if tuple(bundle.labels) != tuple(self.config.labels):
            raise ValueError(
                f"the base model's labels {list(bundle.labels)} differ from "
                f"{list(self.config.labels)}"
            )
        if bundle.model_type != self.spec.model_type:
            raise ValueError(
                f"the base model is a {bundle.model_type}, not a {self.spec.model_type}"
            )
        self.model.load_state_dict(bundle.state_dict)
        self.ema.model.load_state_dict(bundle.state_dict)

    # -- loop ----------------------------------------------------------------------------------
    def progress(self, losses: dict[str, float]) -> Progress:
        elapsed = self.elapsed()
        return Progress(
            epoch=self.state.epoch,
            step=self.state.step,
            fraction=self.fraction(),
            elapsed_seconds=elapsed,
            remaining_seconds=max(0.0, self.config.budget_seconds - elapsed),
            losses=losses,
            images_per_second=self.state.images_seen / max(self.state.train_seconds, 1e-9),
            val_map50=self.state.last_val_map50,
            best_val_map50=self.state.best_val_map50,
        )

    def batches(self, epoch: int) -> torch.utils.data.DataLoader[Any]:
        order = epoch_order(self.factors, self.config.seed, epoch)
        # Mosaic for most of the run, then plain images so the last epochs match inference.
        mosaic = MOSAIC if self.fraction() < MOSAIC_UNTIL else 0.0
        dataset = TrainBatches(
            self.train_samples,
            self.cache,
            self.spec.input_size,
            order,
            self.batch_size,
            self.config.seed,
            epoch,
            mosaic,
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=self.loader_workers,
            prefetch_factor=4 if self.loader_workers else None,
        )

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """One epoch; returns mean losses and whether time or the schedule ran out."""
        self.model.train()
        torch.manual_seed(hash((self.config.seed, epoch)) & 0x7FFF_FFFF)  # stochastic depth
        totals: dict[str, float] = {}
        count = 0
        waited = time.monotonic()
        for images, boxes, labels in self.batches(epoch):
            images, boxes, labels = (t.to(self.device) for t in (images, boxes, labels))
            images = images.contiguous(memory_format=self.memory_format)
            ready = time.monotonic()
            if self.state.schedule_start is None:
                self.state.schedule_start = self.elapsed()
            fraction = self.fraction()
            learning_rate = _learning_rate(self.state.step, fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate * group["lr_scale"]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits, offsets = self.model(images)
            predicted = decode_boxes(offsets.float(), self.model.anchors)
            losses = self.loss(logits, predicted, self.model.anchors, Targets(boxes, labels))
            self.optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            self.optimizer.step()
            self.ema.update(self.model)
            done = time.monotonic()

            self.state.step += 1
            self.state.images_seen += images.shape[0]
            self.state.train_seconds += done - waited
            self.state.wait_seconds += ready - waited
            step_time = done - waited
            self.step_seconds = (
                step_time if self.step_seconds == 0 else 0.8 * self.step_seconds + 0.2 * step_time
            )
            count += 1
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            if self.hooks is not None:
                self.hooks.on_step(self.progress({k: float(v.detach()) for k, v in losses.items()}))
            if self.fraction() >= 1.0 or self.out_of_time():
                return {k: v / count for k, v in totals.items()}, True
            waited = time.monotonic()
        return {k: v / max(count, 1) for k, v in totals.items()}, False

    def validate(self) -> None:
        started = time.monotonic()
        truths, found = scoring.detect_records(self.ema.model, self.val_samples, self.cache)  # type: ignore[arg-type]
        coco, _, _ = scoring.score(truths, found, self.config.labels)
        seconds = time.monotonic() - started
        self.state.eval_seconds_per_image = seconds / len(self.val_samples)
        self.state.last_validation_elapsed = self.elapsed()
        value = fitness(coco)
        self.state.last_val_map50 = max(coco["AP50"], 0.0)
        if value >= self.state.best_fitness:
            self.state.best_fitness = value
            self.state.best_epoch = self.state.epoch
            self.state.best_val_map50 = self.state.last_val_map50
            self.best_state = copy.deepcopy(self.ema.model.state_dict())

    def should_validate(self, finished: bool) -> bool:
        if not self.val_samples:
            return False
        cost = len(self.val_samples) * self.state.eval_seconds_per_image
        left = self.config.budget_seconds - self.elapsed() - self.reserve()
        if finished:
            return left > -cost  # the reserve includes this last validation
        if left < 1.5 * cost:
            return False
        since = self.elapsed() - self.state.last_validation_elapsed
        return self.fraction() >= VALIDATE_EVERY_EPOCH_AFTER or since >= VALIDATION_RATIO * cost

    def converged(self) -> bool:
        if self.config.disable_early_stopping or not self.val_samples:
            return False
        if self.fraction() < EARLY_STOP_AFTER:
            return False
        planned = self.state.epoch / max(self.fraction(), 1e-9)
        patience = max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * planned))
        return self.state.epoch - self.state.best_epoch >= patience

    def run(self) -> TrainResult:
        stop_reason = STOP_BUDGET_REACHED
        while True:
            epoch = self.state.epoch
            losses, finished = self.train_epoch(epoch)
            self.state.epoch += 1
            if self.should_validate(finished):
                self.validate()
            entry = {
                "epoch": self.state.epoch,
                "step": self.state.step,
                "elapsedSeconds": round(self.elapsed(), 2),
                "fraction": round(self.fraction(), 4),
                "losses": {k: round(v, 5) for k, v in losses.items()},
                "valMap50": self.state.last_val_map50,
            }
            self.state.history.append(entry)
            if finished:
                if self.fraction() >= 1.0 and not self.out_of_time():
                    stop_reason = STOP_MODEL_CONVERGED  # the epoch cap ended the schedule first
                break
            if self.converged():
                stop_reason = STOP_MODEL_CONVERGED
                break
            if self.hooks is not None:
                self.hooks.on_epoch(self.progress(losses), self.checkpoint())
        weights = self.best_state if self.best_state is not None else self.ema.model.state_dict()
        bundle = ModelBundle(
            model_type=self.spec.model_type,
            labels=tuple(self.config.labels),
            input_size=self.spec.input_size,
            state_dict={k: v.detach().cpu().clone() for k, v in weights.items()},
        )
        return TrainResult(
            model=bundle.to_bytes(),
            epochs=self.state.epoch,
            steps=self.state.step,
            stop_reason=stop_reason,
            elapsed_seconds=self.elapsed(),
            images_per_second=self.state.images_seen / max(self.state.train_seconds, 1e-9),
            data_wait_share=self.state.wait_seconds / max(self.state.train_seconds, 1e-9),
            best_val_map50=self.state.best_val_map50,
            history=list(self.state.history),
        )


def train(
    config: TrainConfig,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    read_image: ReadImage,
    *,
    hooks: TrainHooks | None = None,
    resume: bytes | None = None,
    base_model: bytes | None = None,
) -> TrainResult:
    """Train a detector within ``config.budget_seconds`` of wall clock.

    ``resume`` is a checkpoint handed to ``hooks.on_epoch`` by an earlier, interrupted run of
    the same job: training continues from its epoch with its elapsed time counted against the
    budget. ``base_model`` is a model file whose weights start the run (incremental training;
    its labels must equal ``config.labels``, else ValueError).
    """
    if not train_samples:
        raise ValueError("there are no training images")
    if not config.labels:
        raise ValueError("there are no labels")
    run = _Run(config, train_samples, val_samples, read_image, hooks)
    if resume is not None:
        run.restore(resume)
    elif base_model is not None:
        run.start_from(base_model)
    return run.run()

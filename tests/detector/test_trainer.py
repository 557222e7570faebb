"""The training loop: determinism, resume, budget, base models, evaluation of the result."""

from __future__ import annotations

import io
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from app.detector import trainer
from app.detector.bundle import load_bundle
from app.detector.data import (
    ImageCache,
    augmented_example,
    decode,
    epoch_order,
    plain_example,
    repeat_factors,
)
from app.detector.evaluate import evaluate
from app.detector.model import Detector
from app.detector.spec import spec_for
from app.detector.types import (
    STOP_BUDGET_REACHED,
    STOP_MODEL_CONVERGED,
    Progress,
    Sample,
    TrainConfig,
)
from tests.detector.conftest import COLOURS, ShapesData, shapes_image

LABELS = ("red", "green")


def config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        model_type="MOBILE_TF_LOW_LATENCY_1",
        labels=LABELS,
        budget_seconds=600,
        max_epochs=2,
        batch_size=4,
        seed=7,
        loader_workers=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.steps: list[Progress] = []
        self.checkpoints: list[bytes] = []

    def on_step(self, progress: Progress) -> None:
        self.steps.append(progress)

    def on_epoch(self, progress: Progress, checkpoint: bytes) -> None:
        self.checkpoints.append(checkpoint)


def weights(model_file: bytes) -> dict[str, torch.Tensor]:
    return load_bundle(model_file).state_dict


def same_weights(a: bytes, b: bytes) -> bool:
    left, right = weights(a), weights(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_augmentation_moves_boxes_with_the_pixels() -> None:
    data, sample = shapes_image(3, size=(320, 240))
    image, size = decode(data, 400)
    assert size == (320, 240)
    for seed in range(12):
        example = augmented_example(image, sample, 320, np.random.default_rng(seed))
        assert example.image.shape == (3, 320, 320) and example.image.dtype == torch.uint8
        pixels = example.image.int()
        for box, label in zip(example.boxes, example.labels, strict=True):
            x1, y1, x2, y2 = box.round().int().tolist()
            inner = pixels[:, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].float().mean(dim=(1, 2))
            colour = torch.tensor(COLOURS[int(label)], dtype=torch.float32)
            # Inside a kept box is its shape's colour (up to colour jitter and overlaps).
            if inner.numel() and y2 - y1 > 10 and x2 - x1 > 10:
                assert int(inner.argmax()) == int(colour.argmax())


def test_plain_example_stretches_to_the_input() -> None:
    data, sample = shapes_image(5)
    image, _ = decode(data, 400)
    example = plain_example(image, sample, 320)
    expected = torch.from_numpy(sample.boxes) * 320
    assert torch.allclose(example.boxes, expected, atol=1e-3)


def test_rare_labels_are_repeated_and_epochs_shuffle_deterministically() -> None:
    common = Sample("a", np.zeros((1, 4), np.float32), np.array([0]))
    rare = Sample("b", np.zeros((1, 4), np.float32), np.array([1]))
    negative = Sample("c", np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    factors = repeat_factors([common] * 16 + [rare] + [negative], 2)
    assert factors[0] == 1.0 and factors[17] == 1.0
    # Square-root rule: seen in 1/16 of the images, half as often as the threshold wants.
    assert factors[16] == pytest.approx(np.sqrt(0.5 * 16))
    many = repeat_factors([common] * 64 + [rare], 2)
    assert many[64] == 4.0  # capped
    assert np.array_equal(epoch_order(factors, 1, 3), epoch_order(factors, 1, 3))
    assert not np.array_equal(epoch_order(factors, 1, 3), epoch_order(factors, 1, 4))
    assert np.bincount(epoch_order(factors, 1, 3))[16] in (2, 3)  # stochastic rounding


def test_new_layers_learn_faster_and_only_weights_decay() -> None:
    model = Detector(spec_for("MOBILE_TF_LOW_LATENCY_1"), 2, pretrained=False)
    groups = trainer._parameter_groups(model)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    grouped = [names[id(p)] for group in groups for p in group["params"]]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter, once
    assert not any(name.startswith("backbone._conv_stem") for name in grouped)  # frozen
    for group in groups:
        pretrained = {names[id(p)].startswith("backbone.") for p in group["params"]}
        assert len(pretrained) == 1
        expected = 1.0 if pretrained.pop() else trainer.NEW_LAYERS_LR_SCALE
        assert group["lr_scale"] == expected
        decays = {p.ndim > 1 for p in group["params"]}
        assert decays == {group["weight_decay"] > 0}
    assert trainer.NEW_LAYERS_LR_SCALE > 1
    assert {names[id(p)].split(".")[0] for g in groups for p in g["params"]} == {
        "backbone",
        "neck",
        "heads",
    }


def test_same_seed_same_model_and_resume_continues_exactly(shapes: ShapesData) -> None:
    first, second = Recorder(), Recorder()
    result = trainer.train(
        config(), shapes.samples[:16], shapes.samples[16:], shapes.read, hooks=first
    )
    again = trainer.train(
        config(), shapes.samples[:16], shapes.samples[16:], shapes.read, hooks=second
    )
    assert result.epochs == 2 and result.steps == 8
    assert result.stop_reason == STOP_MODEL_CONVERGED  # the epoch cap, not time, ended it
    assert same_weights(result.model, again.model)
    assert len(first.checkpoints) == 1  # after epoch 1 (the last epoch ends the run)

    resumed = trainer.train(
        config(), shapes.samples[:16], shapes.samples[16:], shapes.read, resume=first.checkpoints[0]
    )
    assert resumed.history[-1]["epoch"] == 2 and resumed.steps == 8
    assert same_weights(result.model, resumed.model)

    other_seed = trainer.train(config(seed=8), shapes.samples[:16], [], shapes.read)
    assert not same_weights(result.model, other_seed.model)


def test_progress_reports_losses_and_budget(shapes: ShapesData) -> None:
    recorder = Recorder()
    trainer.train(config(max_epochs=1), shapes.samples[:8], [], shapes.read, hooks=recorder)
    assert [p.step for p in recorder.steps] == [1, 2]
    last = recorder.steps[-1]
    assert set(last.losses) == {"cls", "box", "total"} and all(
        np.isfinite(list(last.losses.values()))
    )
    assert last.fraction == 1.0 and last.images_per_second > 0
    assert last.elapsed_seconds + last.remaining_seconds == pytest.approx(600)


# The trainer plans its last steps from the pace it measured; a neighbour taking the CPU
# midway makes them slower than planned.
@pytest.mark.serial
def test_the_budget_is_never_exceeded(shapes: ShapesData) -> None:
    started = time.monotonic()
    result = trainer.train(
        config(budget_seconds=25, max_epochs=None),
        shapes.samples[:16],
        shapes.samples[16:],
        shapes.read,
    )
    took = time.monotonic() - started
    assert result.stop_reason == STOP_BUDGET_REACHED
    assert result.elapsed_seconds <= 25 and took <= 25
    assert result.epochs >= 1
    assert 0 <= result.data_wait_share < 1


def test_a_cancelling_hook_stops_the_run(shapes: ShapesData) -> None:
    class Cancel(Recorder):
        def on_step(self, progress: Progress) -> None:
            if progress.step == 2:
                raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        trainer.train(config(), shapes.samples[:16], [], shapes.read, hooks=Cancel())


def test_base_model_starts_the_run_and_must_share_labels(shapes: ShapesData) -> None:
    base = trainer.train(config(max_epochs=1), shapes.samples[:8], [], shapes.read)
    uptrained = trainer.train(
        config(max_epochs=1), shapes.samples[:8], [], shapes.read, base_model=base.model
    )
    assert not same_weights(base.model, uptrained.model)
    with pytest.raises(ValueError, match="labels"):
        trainer.train(
            config(labels=("red", "blue")),
            shapes.samples[:8],
            [],
            shapes.read,
            base_model=base.model,
        )
    with pytest.raises(ValueError, match="no training images"):
        trainer.train(config(), [], [], shapes.read)


def test_evaluation_of_a_model_file_has_vertex_and_coco_figures(shapes: ShapesData) -> None:
    result = trainer.train(config(max_epochs=1), shapes.samples[:8], [], shapes.read)
    evaluation = evaluate(result.model, shapes.samples[16:], shapes.read)
    assert evaluation.image_count == 8
    assert evaluation.box_count == sum(len(s.labels) for s in shapes.samples[16:])
    assert set(evaluation.coco_per_label) == set(LABELS)
    metrics = evaluation.vertex["metrics"]
    assert metrics["evaluatedBoundingBoxCount"] == evaluation.box_count
    assert len(metrics["boundingBoxMetrics"]) == 23
    with pytest.raises(ValueError, match="model file"):
        evaluate(b"not a model", shapes.samples[16:], shapes.read)


def test_image_cache_keeps_displayed_size_and_orientation() -> None:
    from PIL import Image

    image = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    sample = Sample("x", np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    cache = ImageCache([sample], lambda _: buffer.getvalue(), 320)
    assert cache.size_of("x") == (100, 200)
    assert tuple(cache["x"].shape) == (3, 200, 100)

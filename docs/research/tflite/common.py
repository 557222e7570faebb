"""Shared helpers of the lab: a Detector with non-trivial outputs, generated images, the PyTorch
reference detections."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from app.detector.model import Detector
from app.detector.predict import postprocess
from app.detector.spec import spec_for

LABELS = ["cat", "dog", "raccoon"]
SIZE = 320


def make_model(seed: int = 0) -> tuple[Detector, list[str]]:
    """With LAB_MODEL=trained: the detector trained by train_lab_model.py (out/trained_model.bin).
    Otherwise: EfficientNet-Lite0 ImageNet backbone + a random head with spread-out scores, eval mode."""
    if os.environ.get("LAB_MODEL") == "trained":
        from app.detector.bundle import load_bundle
        from app.detector.predict import build_model

        bundle = load_bundle(open("out/trained_model.bin", "rb").read())
        return build_model(bundle), list(bundle.labels)
    torch.manual_seed(seed)
    model = Detector(spec_for("mobile-low-latency"), len(LABELS), pretrained=True)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        for head in model.heads:
            head.cls_out.weight.normal_(0.0, 1.0, generator=generator)
            head.box_out.weight.normal_(0.0, 1.0, generator=generator)
        # Rescale the random 1x1 output convolutions so that on a generated image the logits
        # spread with std 2 around -8 and the box offsets with std 0.5 (random features are tiny).
        captured: dict[nn.Module, torch.Tensor] = {}
        hooks = [
            conv.register_forward_hook(lambda mod, inp, out: captured.__setitem__(mod, out))
            for head in model.heads
            for conv in (head.cls_out, head.box_out)
        ]
        model(torch.from_numpy(make_image(seed + 7)).permute(2, 0, 1)[None].float())
        for hook in hooks:
            hook.remove()
        for head in model.heads:
            for conv, std, bias in ((head.cls_out, 2.0, -8.0), (head.box_out, 0.5, 0.0)):
                out = captured[conv] - conv.bias[None, :, None, None]
                conv.weight.mul_(std / out.std().clamp(min=1e-12))
                conv.bias.fill_(bias)
    return model.eval(), list(LABELS)


def make_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A (size, size, 3) uint8 RGB image: gradient background, noise, random shapes."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(0, 255, 3) * ramp[:, None, None] + rng.uniform(0, 255, 3) * (
        1 - ramp[None, :, None]
    )
    base = np.clip(base * 0.5 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.integers(0, size - 40, 2)
        w, h = rng.integers(20, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [int(x0), int(y0), int(min(size - 1, x0 + w)), int(min(size - 1, y0 + h))]
        if rng.random() < 0.5:
            draw.rectangle(box, fill=colour)
        else:
            draw.ellipse(box, fill=colour)
    return np.asarray(image)


def test_images(n: int = 5) -> list[np.ndarray]:
    if os.environ.get("LAB_MODEL") == "trained":
        from train_lab_model import make_shapes

        return [make_shapes(50_000 + i)[0] for i in range(n)]
    return [make_image(1000 + i) for i in range(n)]


def calibration_images(n: int = 30) -> list[np.ndarray]:
    """Generated images plus an all-black and an all-white frame (full pixel range)."""
    if os.environ.get("LAB_MODEL") == "trained":
        from train_lab_model import make_shapes

        images = [make_shapes(60_000 + i)[0] for i in range(n)]
    else:
        images = [make_image(2000 + i) for i in range(n)]
    images.append(np.zeros((SIZE, SIZE, 3), np.uint8))
    images.append(np.full((SIZE, SIZE, 3), 255, np.uint8))
    return images


@torch.inference_mode()
def torch_detections(
    model: Detector,
    image: np.ndarray,
    *,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
):
    """app.detector.predict.postprocess on one uint8 HWC image: boxes x1,y1,x2,y2 in [0,1]."""
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    logits, offsets = model(batch)
    return postprocess(
        logits,
        offsets,
        model.anchors,
        model.spec.input_size,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )[0]

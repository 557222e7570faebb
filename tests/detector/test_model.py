"""The network, its backbones' ImageNet weights, box decoding and the assigner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.detector.backbone import build_backbone, pretrained_state_dict
from app.detector.loss import DetectionLoss, Targets, assign
from app.detector.model import STRIDES, Detector, decode_boxes, make_anchors
from app.detector.spec import ALIASES, SPECS, ModelType, resolve_model_type, spec_for


def test_model_types_resolve_by_vertex_name_and_alias() -> None:
    assert resolve_model_type("MOBILE_TF_VERSATILE_1") is ModelType.MOBILE_TF_VERSATILE_1
    assert resolve_model_type("mobile-high-accuracy") is ModelType.MOBILE_TF_HIGH_ACCURACY_1
    assert set(ALIASES.values()) == set(ModelType)
    with pytest.raises(ValueError, match="MOBILE_TF_LOW_LATENCY_1"):
        resolve_model_type("CLOUD_HIGH_ACCURACY_1")


@pytest.mark.parametrize("model_type", list(ModelType))
def test_backbone_loads_imagenet_weights_and_gives_strides_8_16_32(model_type: ModelType) -> None:
    spec = SPECS[model_type]
    backbone = build_backbone(spec.backbone).eval()
    state = pretrained_state_dict(spec.backbone)
    own = backbone.state_dict()
    assert set(state) == set(own)  # strict: every weight from the package, none invented
    assert all(torch.equal(own[key], value) for key, value in state.items())
    size = spec.input_size
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, size, size))
    assert [f.shape[-1] for f in features] == [size // s for s in STRIDES]
    assert [f.shape[1] for f in features] == backbone.feature_channels


def test_pretrained_features_are_meaningful() -> None:
    """ImageNet features tell a textured image from a flat one (random weights barely do)."""
    backbone = build_backbone("efficientnet-lite0").eval()
    flat = torch.zeros(1, 3, 320, 320)
    checker = (torch.arange(320)[:, None] // 16 + torch.arange(320)[None] // 16) % 2 * 255.0
    textured = checker.expand(1, 3, 320, 320)
    with torch.no_grad():
        a, b = backbone((flat - 127) / 128)[-1], backbone((textured - 127) / 128)[-1]
    assert float((a - b).abs().mean()) > 0.05


def test_detector_outputs_one_prediction_per_anchor() -> None:
    spec = spec_for("MOBILE_TF_LOW_LATENCY_1")
    model = Detector(spec, num_classes=3).eval()
    with torch.no_grad():
        logits, offsets = model(torch.rand(2, 3, 320, 320) * 255)
    cells = sum((320 // s) ** 2 for s in STRIDES)
    assert logits.shape == (2, cells, 3) and offsets.shape == (2, cells, 4)
    # The classifier starts at the focal-loss prior: every score near 0.01.
    assert float(logits.sigmoid().mean()) == pytest.approx(0.01, rel=0.3)


def test_decoding_is_centre_size_against_cell_anchors() -> None:
    anchors = make_anchors(64)
    assert anchors.shape == (8 * 8 + 4 * 4 + 2 * 2, 3)
    assert anchors[0].tolist() == [4.0, 4.0, 8.0]  # first stride-8 cell
    assert anchors[64].tolist() == [8.0, 8.0, 16.0]  # first stride-16 cell
    offsets = torch.zeros(1, len(anchors), 4)
    offsets[0, 0] = torch.tensor([0.5, -0.25, np.log(2.0), 0.0])
    boxes = decode_boxes(offsets, anchors)
    # centre (4 + 0.5*8, 4 - 0.25*8) = (8, 2); size (16, 8)
    assert boxes[0, 0].tolist() == pytest.approx([0.0, -2.0, 16.0, 6.0])


def test_every_object_gets_positives_even_smaller_than_a_cell() -> None:
    anchors = make_anchors(320)
    count = len(anchors)
    gt = torch.tensor([[[100.0, 100.0, 104.0, 103.0], [10.0, 20.0, 300.0, 310.0]]])
    targets = Targets(gt, torch.tensor([[0, 1]]))
    scores = torch.full((1, count, 2), 0.01)
    boxes = decode_boxes(torch.zeros(1, count, 4), anchors)
    cls_target, box_target, positive = assign(scores, boxes, anchors, targets)
    assigned = box_target[positive]
    assert any(torch.equal(row, gt[0, 0]) for row in assigned)  # the 4x3-pixel object
    assert any(torch.equal(row, gt[0, 1]) for row in assigned)
    # Soft targets sit in (0, 1] and only on the object's own class.
    small = (box_target[0] == gt[0, 0]).all(dim=1) & positive[0]
    assert bool((cls_target[0, small, 0] > 0).all()) and bool((cls_target[0, small, 1] == 0).all())
    assert float(cls_target.max()) <= 1.0


def test_loss_is_finite_and_drops_when_predictions_match() -> None:
    anchors = make_anchors(320)
    count = len(anchors)
    targets = Targets(torch.tensor([[[40.0, 40.0, 120.0, 140.0]]]), torch.tensor([[0]]))
    criterion = DetectionLoss()
    logits = torch.full((1, count, 1), -4.6, requires_grad=True)
    offsets = torch.zeros(1, count, 4, requires_grad=True)
    losses = criterion(logits, decode_boxes(offsets, anchors), anchors, targets)
    assert all(torch.isfinite(value) for value in losses.values())
    losses["total"].backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    perfect = torch.tensor([[[40.0, 40.0, 120.0, 140.0]]]).expand(1, count, 4)
    better = criterion(logits.detach(), perfect, anchors, targets)
    assert float(better["box"]) < float(losses["box"].detach())


def test_no_objects_gives_only_background_loss() -> None:
    anchors = make_anchors(320)
    count = len(anchors)
    targets = Targets(torch.zeros(1, 1, 4), torch.tensor([[-1]]))
    losses = DetectionLoss()(
        torch.zeros(1, count, 2), decode_boxes(torch.zeros(1, count, 4), anchors), anchors, targets
    )
    assert float(losses["box"]) == 0.0 and float(losses["cls"]) > 0

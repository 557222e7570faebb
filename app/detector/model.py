"""The detector network: EfficientNet-Lite features, a PAN neck and a one-anchor-per-cell head.

Box encoding (what the TFLite ``TFLite_Detection_PostProcess`` op can decode, DESIGN.md §6):
every cell of the stride-8/16/32 grids is an anchor centred on the cell with the stride as its
size; the head predicts ``(dx, dy, tw, th)`` and the box is centre ``anchor + d * stride``, size
``exp(t) * stride`` — the op's centre-size decoding with all scale factors 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from app.detector.backbone import build_backbone
from app.detector.spec import ModelSpec

STRIDES = (8, 16, 32)
# exp() of a larger log-size would exceed any input we accept; keeps early training finite.
MAX_LOG_SIZE = math.log(2048 / 8)
# EfficientNet-Lite's input scaling: (x - 127) / 128 maps pixels 0-255 to about [-1, 1].
INPUT_MEAN = 127.0
INPUT_STD = 128.0
_PRIOR_PROBABILITY = 0.01


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


def _separable(channels: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1: the cheap convolution of mobile detectors."""
    return nn.Sequential(
        _conv_bn(channels, channels, 3, stride, groups=channels), _conv_bn(channels, channels)
    )


class PAN(nn.Module):
    """Top-down then bottom-up fusion of three levels, all at ``channels`` wide."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_conv_bn(c, channels) for c in in_channels)
        self.top_down = nn.ModuleList(_separable(channels) for _ in in_channels[:-1])
        self.down = nn.ModuleList(_separable(channels, stride=2) for _ in in_channels[:-1])
        self.bottom_up = nn.ModuleList(_separable(channels) for _ in in_channels[:-1])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        # Top-down: coarse context into the finer maps.
        merged = [laterals[-1]]
        for index in range(len(laterals) - 2, -1, -1):
            upsampled = nn.functional.interpolate(merged[0], scale_factor=2.0, mode="nearest")
            merged.insert(0, self.top_down[index](laterals[index] + upsampled))
        # Bottom-up: fine localisation back into the coarser maps.
        outputs = [merged[0]]
        for index in range(1, len(merged)):
            outputs.append(
                self.bottom_up[index - 1](merged[index] + self.down[index - 1](outputs[-1]))
            )
        return outputs


class Head(nn.Module):
    """Decoupled classification and box branches for one level."""

    def __init__(self, channels: int, num_classes: int, depth: int) -> None:
        super().__init__()
        self.cls_branch = nn.Sequential(*(_separable(channels) for _ in range(depth)))
        self.box_branch = nn.Sequential(*(_separable(channels) for _ in range(depth)))
        self.cls_out = nn.Conv2d(channels, num_classes, 1)
        self.box_out = nn.Conv2d(channels, 4, 1)
        assert self.cls_out.bias is not None and self.box_out.bias is not None
        nn.init.constant_(
            self.cls_out.bias, -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY)
        )
        nn.init.normal_(self.cls_out.weight, std=0.01)
        nn.init.zeros_(self.box_out.bias)
        nn.init.normal_(self.box_out.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_out(self.cls_branch(x)), self.box_out(self.box_branch(x))


def make_anchors(input_size: int) -> torch.Tensor:
    """(N, 3) anchor centres x, y and sizes in input pixels, level by level, row-major."""
    rows = []
    for stride in STRIDES:
        cells = input_size // stride
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        centre_x = (xs.reshape(-1).float() + 0.5) * stride
        centre_y = (ys.reshape(-1).float() + 0.5) * stride
        rows.append(torch.stack([centre_x, centre_y, torch.full_like(centre_x, stride)], dim=1))
    return torch.cat(rows)


class Detector(nn.Module):
    """Takes images ``(B, 3, S, S)`` with pixel values 0-255; returns class logits ``(B, N, C)``
    and raw box offsets ``(B, N, 4)`` as ``dx, dy, tw, th`` against :func:`make_anchors`."""

    def __init__(self, spec: ModelSpec, num_classes: int, *, pretrained: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.backbone = build_backbone(spec.backbone, pretrained=pretrained)
        self.neck = PAN(self.backbone.feature_channels, spec.neck_channels)
        self.heads = nn.ModuleList(
            Head(spec.neck_channels, num_classes, spec.head_convs) for _ in STRIDES
        )
        self.anchors: torch.Tensor
        self.register_buffer("anchors", make_anchors(spec.input_size), persistent=False)
        self.frozen = self.backbone.freeze(spec.frozen_blocks)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        for module in self.frozen:  # frozen blocks keep their ImageNet BatchNorm statistics
            module.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_normalized((images - INPUT_MEAN) / INPUT_STD)

    def forward_normalized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on images already scaled to EfficientNet-Lite's input range."""
        levels = self.neck(self.backbone(x))
        logits, offsets = [], []
        for head, level in zip(self.heads, levels, strict=True):
            cls, box = head(level)
            logits.append(cls.flatten(2))
            offsets.append(box.flatten(2))
        return torch.cat(logits, 2).transpose(1, 2), torch.cat(offsets, 2).transpose(1, 2)


def decode_boxes(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Corner boxes ``x1, y1, x2, y2`` in input pixels from ``(..., N, 4)`` head offsets."""
    stride = anchors[:, 2]
    centre_x = anchors[:, 0] + offsets[..., 0] * stride
    centre_y = anchors[:, 1] + offsets[..., 1] * stride
    width = torch.exp(offsets[..., 2].clamp(max=MAX_LOG_SIZE)) * stride
    height = torch.exp(offsets[..., 3].clamp(max=MAX_LOG_SIZE)) * stride
    return torch.stack(
        [centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2],
        dim=-1,
    )

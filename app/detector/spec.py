"""The three model types, named as Vertex AI names them, and the architecture behind each."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ModelType(StrEnum):
    MOBILE_TF_LOW_LATENCY_1 = "MOBILE_TF_LOW_LATENCY_1"
    MOBILE_TF_VERSATILE_1 = "MOBILE_TF_VERSATILE_1"
    MOBILE_TF_HIGH_ACCURACY_1 = "MOBILE_TF_HIGH_ACCURACY_1"


# Friendlier names accepted wherever a model type is (DESIGN.md §3.2).
ALIASES: dict[str, ModelType] = {
    "mobile-low-latency": ModelType.MOBILE_TF_LOW_LATENCY_1,
    "mobile-versatile": ModelType.MOBILE_TF_VERSATILE_1,
    "mobile-high-accuracy": ModelType.MOBILE_TF_HIGH_ACCURACY_1,
}


@dataclass(frozen=True)
class ModelSpec:
    """What a model type means locally: backbone, input size and widths.

    ``frozen_blocks`` leading backbone blocks (and the stem) keep their ImageNet weights with
    BatchNorm in eval mode: the depthwise backward pass of those high-resolution blocks is the
    costliest part of a CPU step and gains least from fine-tuning (DESIGN.md §6.1).
    """

    model_type: ModelType
    backbone: str
    input_size: int
    neck_channels: int
    head_convs: int
    frozen_blocks: int


SPECS: dict[ModelType, ModelSpec] = {
    ModelType.MOBILE_TF_LOW_LATENCY_1: ModelSpec(
        ModelType.MOBILE_TF_LOW_LATENCY_1, "efficientnet-lite0", 320, 64, 2, 3
    ),
    ModelType.MOBILE_TF_VERSATILE_1: ModelSpec(
        ModelType.MOBILE_TF_VERSATILE_1, "efficientnet-lite1", 384, 80, 2, 3
    ),
    ModelType.MOBILE_TF_HIGH_ACCURACY_1: ModelSpec(
        ModelType.MOBILE_TF_HIGH_ACCURACY_1, "efficientnet-lite2", 448, 96, 2, 3
    ),
}


def resolve_model_type(name: str) -> ModelType:
    """The model type for a Vertex name or an alias; ValueError naming the choices otherwise."""
    if name in ALIASES:
        return ALIASES[name]
    try:
        return ModelType(name)
    except ValueError:
        choices = ", ".join([*ModelType, *ALIASES])
        raise ValueError(f"unknown model type {name!r}; expected one of {choices}") from None


def spec_for(model_type: str) -> ModelSpec:
    return SPECS[resolve_model_type(model_type)]

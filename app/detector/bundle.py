"""The model file: weights plus everything needed to rebuild and use them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from app.detector.spec import ModelType, resolve_model_type, spec_for

FORMAT = "edge-automl-detector/1"


@dataclass(frozen=True)
class ModelBundle:
    model_type: ModelType
    labels: tuple[str, ...]
    input_size: int
    state_dict: dict[str, torch.Tensor]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "format": FORMAT,
                "model_type": str(self.model_type),
                "labels": list(self.labels),
                "input_size": self.input_size,
                "state_dict": self.state_dict,
            },
            buffer,
        )
        return buffer.getvalue()

    def describe(self) -> dict[str, Any]:
        return {
            "modelType": str(self.model_type),
            "labels": list(self.labels),
            "inputSize": self.input_size,
        }


def load_bundle(data: bytes) -> ModelBundle:
    """Read a model file; ValueError when it is not one (never unpickles arbitrary objects)."""
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a variety of types for foreign files
        raise ValueError(f"not an edge-automl model file: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"not an edge-automl model file (expected format {FORMAT})")
    model_type = resolve_model_type(raw["model_type"])
    input_size = int(raw["input_size"])
    if input_size != spec_for(model_type).input_size:
        raise ValueError(f"model file has input size {input_size}, not its type's")
    return ModelBundle(
        model_type=model_type,
        labels=tuple(str(label) for label in raw["labels"]),
        input_size=input_size,
        state_dict=raw["state_dict"],
    )

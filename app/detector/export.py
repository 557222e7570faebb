"""Exported model files: ONNX with the decode and NMS inside the graph, and running them.

The ONNX graph takes one image ``image`` float32 ``[1, 3, S, S]`` with pixel values 0-255,
already stretched to the model's input (what :func:`app.detector.data.plain_example` makes;
the EfficientNet-Lite scaling ``(x - 127) / 128`` is inside the graph), and returns
``boxes`` ``[M, 4]`` (``x_min, y_min, x_max, y_max`` relative to the image), ``scores``
``[M]`` and ``labels`` ``[M]`` (int64), highest score first, ``M <= 100``: the same decode,
score threshold, per-class NMS and cap as :func:`app.detector.predict.postprocess`.

Exported with PyTorch's TorchScript-based exporter (``dynamo=False``): the dynamo exporter
fails on torchvision's NMS here (DESIGN.md §6). Export is deterministic: the same model file
gives the same bytes.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.onnx.operators
from torchvision.ops import nms

from app.detector.bundle import load_bundle
from app.detector.model import Detector, decode_boxes
from app.detector.predict import (
    MAX_DETECTIONS,
    NMS_IOU,
    PRE_NMS_TOP_K,
    SCORE_THRESHOLD,
    build_model,
)
from app.detector.types import Detections

ONNX_OPSET = 17
ONNX_INPUT = "image"
ONNX_OUTPUTS = ("boxes", "scores", "labels")
# The file describes itself (ONNX metadata_props), so a runner needs nothing else.
METADATA_LABELS = "edge_automl.labels"
METADATA_MODEL_TYPE = "edge_automl.model_type"
METADATA_INPUT_SIZE = "edge_automl.input_size"


@dataclass(frozen=True)
class ExportedFile:
    data: bytes
    details: dict[str, Any]  # what a client needs to run it: opset, input, outputs, labels


class _WithPostprocess(torch.nn.Module):
    """The detector followed by predict.postprocess's steps, for one image."""

    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model
        self.input_size = model.spec.input_size

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, offsets = self.model(image)
        scores = logits[0].sigmoid()
        boxes = decode_boxes(offsets[0], self.model.anchors) / self.input_size
        anchor_index, label = (scores > SCORE_THRESHOLD).nonzero(as_tuple=True)
        score = scores[anchor_index, label]
        # topk of min(k, n), with n read from the shape inside the graph: traced as a Python
        # int it would be frozen at the example's candidate count.
        count = torch.onnx.operators.shape_as_tensor(score)[:1]
        k = torch.min(torch.cat((torch.tensor([PRE_NMS_TOP_K]), count)))
        top = score.topk(k).indices
        anchor_index, label, score = anchor_index[top], label[top], score[top]
        box = boxes[anchor_index].clamp(0.0, 1.0)
        # Per-class NMS as one NMS: boxes lie in [0, 1], so shifting each class's by 2 x its
        # label keeps classes apart (torchvision's batched_nms does the same).
        keep = _FirstKeptByNms.apply(box + 2.0 * label.unsqueeze(1).to(box.dtype), score)
        return box[keep], score[keep], label[keep]


class _FirstKeptByNms(torch.autograd.Function):
    """The indices of the first MAX_DETECTIONS boxes NMS keeps, highest score first.

    Exported as one ``NonMaxSuppression`` asking for MAX_DETECTIONS boxes, so onnxruntime
    stops once it has them and compares each candidate with at most that many kept boxes.
    torchvision's export asks for every box (``sys.maxsize``), which on a worst-case image
    took most of the post-processing time, and wraps it in an ``If`` for empty input, which
    the ONNX operator handles anyway.
    """

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return nms(boxes, scores, NMS_IOU)[:MAX_DETECTIONS]

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any) -> Any:
        def constant(value: torch.Tensor) -> Any:
            return g.op("Constant", value_t=value)

        selected = g.op(
            "NonMaxSuppression",
            g.op("Unsqueeze", boxes, constant(torch.tensor([0]))),  # [1, N, 4]
            g.op("Unsqueeze", scores, constant(torch.tensor([0, 1]))),  # [1, 1, N]
            constant(torch.tensor([MAX_DETECTIONS])),
            constant(torch.tensor([NMS_IOU], dtype=torch.float32)),
        )  # [K, 3]: batch, class, box index
        column = g.op("Gather", selected, constant(torch.tensor([2])), axis_i=1)
        return g.op("Squeeze", column, constant(torch.tensor([1])))


def export_onnx(model_file: bytes) -> ExportedFile:
    """The model file as ONNX (float32, decode and NMS inside)."""
    bundle = load_bundle(model_file)
    wrapped = _WithPostprocess(build_model(bundle)).eval()
    size = bundle.input_size
    # A fixed example: tracing follows data-dependent shapes through, not values.
    example = torch.full((1, 3, size, size), 127.0)
    scratch = tempfile.TemporaryDirectory(prefix="edge-automl-onnx-")
    path = Path(scratch.name) / "model.onnx"
    with scratch, warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter warns that it is deprecated and that traced shapes may
        # vary; both are known: the graph's candidate counts are dynamic by construction.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            path,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_axes={name: {0: "detections"} for name in ONNX_OUTPUTS},
        )
        described = onnx.load(path)
    for key, value in (
        (METADATA_LABELS, json.dumps(list(bundle.labels))),
        (METADATA_MODEL_TYPE, str(bundle.model_type)),
        (METADATA_INPUT_SIZE, str(size)),
    ):
        described.metadata_props.add(key=key, value=value)
    described.producer_name = "edge-automl"
    return ExportedFile(
        data=described.SerializeToString(),
        details={
            "opset": ONNX_OPSET,
            "input": {
                "name": ONNX_INPUT,
                "shape": [1, 3, size, size],
                "dtype": "float32",
                "range": "0-255 RGB, the image stretched to the input size",
            },
            "outputs": {
                "boxes": "[M, 4] float32 xMin, yMin, xMax, yMax relative to the image",
                "scores": "[M] float32, highest first",
                "labels": "[M] int64 indices into labels",
            },
            "labels": list(bundle.labels),
            "modelType": str(bundle.model_type),
            "inputSize": size,
        },
    )


class OnnxPredictor:
    """An onnxruntime session over an exported file, predicting like predict_images."""

    def __init__(self, data: bytes, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a foreign file
            raise ValueError(f"not an ONNX file onnxruntime can run: {exc}") from exc
        described = self.session.get_modelmeta().custom_metadata_map
        if METADATA_LABELS not in described:
            raise ValueError("not an edge-automl ONNX file: it has no label metadata")
        self.labels = tuple(json.loads(described[METADATA_LABELS]))
        self.input_size = int(described[METADATA_INPUT_SIZE])

    def predict(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        """Detections for uint8 (3, S, S) images already resized to the model's input."""
        results = []
        for image in images:
            batch = image.unsqueeze(0).float().numpy()
            boxes, scores, labels = self.session.run(None, {ONNX_INPUT: batch})
            results.append(
                Detections(
                    boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    scores=np.asarray(scores, dtype=np.float32),
                    labels=np.asarray(labels, dtype=np.int64),
                )
            )
        return results

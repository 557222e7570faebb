"""Prototype: export an app.detector Detector to a TFLite file that MediaPipe Tasks'
ObjectDetector and the LiteRT interpreter load unchanged.

Pipeline (no TensorFlow anywhere):
1. ``DetectorForExport`` wraps the Detector: input [1,H,W,3] float32 (NHWC), outputs
   box encodings [1,N,4] as (dy, dx, th, tw) and sigmoid scores [1,N,K].
2. litert-torch converts that module to a TFLite flatbuffer.
3. ``append_postprocess`` edits the flatbuffer (ai_edge_litert.schema_py_generated object API)
   and appends the custom op ``TFLite_Detection_PostProcess`` fed by a constant anchor tensor
   (y, x, h, w) = (cy/S, cx/S, stride/S, stride/S) and scale factors 1, so the op's centre-size
   decoding equals ``app.detector.model.decode_boxes`` / S.
4. Metadata (label map, normalization) is written by ``metadata.py`` (pure Python,
   flatbuffers + the metadata schema; byte-identical to tflite-support 0.4.4's metadata).

``clip_boxes`` (default True) clips decoded boxes to the image in-graph and re-encodes them, so the op
sees (and NMSes) exactly the boxes app.detector.predict.postprocess sees, and MediaPipe, which mishandles
boxes crossing the top/left border, reports them correctly.

LiteRT caveat: regular NMS in TFLite_Detection_PostProcess drops one class when the interpreter runs
with num_threads=2 (ai-edge-litert 1.4.0 .. 2.4.0.dev; tensorflow/tensorflow#56058): run such files with
num_threads=1, or use a copy without the op for multi-threaded server inference.

Normalization: by default the graph takes *normalized* input ((pixel - 127) / 128, what
EfficientNet-Lite expects) and the metadata records mean 127 / std 128, as AutoML's float
models did; MediaPipe normalizes before inference. With ``fold_normalization=True`` the graph
takes raw 0..255 floats and the metadata says mean 0 / std 1.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import flatbuffers
import numpy as np
import torch
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers
from torch import nn

from app.detector.model import _MAX_LOG_SIZE, Detector

MEAN = 127.0
STD = 128.0
POSTPROCESS_OP = "TFLite_Detection_PostProcess"


class DetectorForExport(nn.Module):
    """NHWC input -> (box encodings (1,N,4) as dy,dx,th,tw; class scores (1,N,K))."""

    def __init__(
        self, model: Detector, *, fold_normalization: bool = False, clip_boxes: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.fold_normalization = fold_normalization
        self.clip_boxes = clip_boxes
        self.size = float(model.spec.input_size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x = image.permute(0, 3, 1, 2)
        if self.fold_normalization:
            x = (x - MEAN) / STD
        # Detector.forward minus its own normalization (keep in sync with model.py).
        levels = m.neck(m.backbone(x))
        logits, offsets = [], []
        for head, level in zip(m.heads, levels, strict=True):
            cls, box = head(level)
            logits.append(cls.flatten(2))
            offsets.append(box.flatten(2))
        logits_t = torch.cat(logits, 2).transpose(1, 2)
        offsets_t = torch.cat(offsets, 2).transpose(1, 2)
        scores = torch.sigmoid(logits_t)
        d = offsets_t[..., 0:2]  # dx, dy in strides
        t = offsets_t[..., 2:4].clamp(max=_MAX_LOG_SIZE)  # log w, log h in strides
        if self.clip_boxes:
            # Decode, clip to the image like predict.postprocess does, re-encode: the op's NMS
            # then sees exactly the boxes the PyTorch path sees.
            anchor_xy = m.anchors[:, 0:2]
            stride = m.anchors[:, 2:3]
            centre = anchor_xy + d * stride
            half = torch.exp(t) * stride * 0.5
            lo = (centre - half).clamp(0.0, self.size)
            hi = (centre + half).clamp(0.0, self.size)
            d = ((lo + hi) * 0.5 - anchor_xy) / stride
            t = torch.log((hi - lo).clamp(min=1e-6) / stride)
        encodings = torch.cat([d[..., 1:2], d[..., 0:1], t[..., 1:2], t[..., 0:1]], dim=-1)
        return encodings, scores


def op_anchors(model: Detector) -> np.ndarray:
    """(N, 4) float32 anchors (y, x, h, w) normalized by the input size."""
    a = model.anchors.detach().cpu().double().numpy()
    s = float(model.spec.input_size)
    return np.stack([a[:, 1] / s, a[:, 0] / s, a[:, 2] / s, a[:, 2] / s], axis=1).astype(
        np.float32
    )


def postprocess_options(
    num_classes: int,
    *,
    max_detections: int,
    score_threshold: float,
    iou_threshold: float,
    use_regular_nms: bool,
    detections_per_class: int = 100,
) -> bytes:
    """Custom options of TFLite_Detection_PostProcess as a flexbuffer map."""
    fbb = flexbuffers.Builder()
    with fbb.Map():
        fbb.Int("max_detections", max_detections)
        fbb.Int("max_classes_per_detection", 1)
        fbb.Int("detections_per_class", detections_per_class)
        fbb.Bool("use_regular_nms", use_regular_nms)
        fbb.Float("nms_score_threshold", score_threshold)
        fbb.Float("nms_iou_threshold", iou_threshold)
        fbb.Int("num_classes", num_classes)
        fbb.Float("y_scale", 1.0)
        fbb.Float("x_scale", 1.0)
        fbb.Float("h_scale", 1.0)
        fbb.Float("w_scale", 1.0)
    return bytes(fbb.Finish())


def _read_model(data: bytes) -> schema.ModelT:
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    for buffer in model.buffers:  # resolve buffers stored after the flatbuffer, if any
        if buffer.offset:
            buffer.data = np.frombuffer(
                data[buffer.offset : buffer.offset + buffer.size], dtype=np.uint8
            )
            buffer.offset = 0
            buffer.size = 0
    return model


def _write_model(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _add_buffer(model: schema.ModelT, data: bytes | None = None) -> int:
    buffer = schema.BufferT()
    if data is not None:
        buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _add_tensor(
    model: schema.ModelT, sg: schema.SubGraphT, name: str, shape: list[int], buffer: int = 0
) -> int:
    tensor = schema.TensorT()
    tensor.name = name.encode()
    tensor.shape = list(shape)
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = buffer
    sg.tensors.append(tensor)
    return len(sg.tensors) - 1


def append_postprocess(
    tflite: bytes,
    anchors: np.ndarray,
    options: bytes,
    max_detections: int,
    *,
    canonical_names: bool = True,
) -> bytes:
    """Append TFLite_Detection_PostProcess to a model whose outputs are (encodings, scores)."""
    model = _read_model(tflite)
    sg = model.subgraphs[0]
    outs = list(sg.outputs)
    assert len(outs) == 2, outs
    shapes = [list(sg.tensors[i].shape) for i in outs]
    box_index = outs[0] if shapes[0][-1] == 4 else outs[1]
    score_index = outs[1] if box_index == outs[0] else outs[0]
    anchor_index = _add_tensor(
        model, sg, "anchors", list(anchors.shape), _add_buffer(model, anchors.tobytes())
    )
    max_det = max_detections
    names = [POSTPROCESS_OP, f"{POSTPROCESS_OP}:1", f"{POSTPROCESS_OP}:2", f"{POSTPROCESS_OP}:3"]
    out_shapes = [[1, max_det, 4], [1, max_det], [1, max_det], [1]]
    outputs = [_add_tensor(model, sg, n, s) for n, s in zip(names, out_shapes, strict=True)]

    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CUSTOM
    code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = POSTPROCESS_OP.encode()
    code.version = 1
    model.operatorCodes.append(code)

    op = schema.OperatorT()
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.inputs = [box_index, score_index, anchor_index]
    op.outputs = outputs
    op.customOptions = np.frombuffer(options, dtype=np.uint8)
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    sg.operators.append(op)
    sg.outputs = outputs

    # Keep the signature consistent with the new outputs (LiteRT's signature runner uses it).
    keys = ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]
    for sig in model.signatureDefs or []:
        sig.outputs = []
        for key, index in zip(keys, outputs, strict=True):
            tm = schema.TensorMapT()
            tm.name = key.encode()
            tm.tensorIndex = index
            sig.outputs.append(tm)
    if canonical_names:
        _canonicalize_names(model)
    return _write_model(model)


def _canonicalize_names(model: schema.ModelT) -> None:
    """Replace the converter's tensor names, which embed Python module paths of the wrapper
    (``__main__.DetectorForExport/app.detector.backbone...``), with positional ones, so the bytes
    do not depend on where the code lives; names the input ``image``."""
    sg = model.subgraphs[0]
    keep = set(sg.outputs)
    for index, tensor in enumerate(sg.tensors):
        if index in sg.inputs:
            tensor.name = b"image"
        elif index not in keep and tensor.name != b"anchors":
            tensor.name = f"t{index}".encode()
    for sig in model.signatureDefs or []:
        for tm in sig.inputs:
            tm.name = b"image"


def convert(module: nn.Module, size: int) -> bytes:
    import litert_torch

    sample = (torch.zeros(1, size, size, 3),)
    edge_model = litert_torch.convert(module.eval(), sample)
    return edge_model.model_content()


def export_float(
    model: Detector,
    labels: list[str],
    *,
    max_detections: int = 100,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.6,
    use_regular_nms: bool = True,
    fold_normalization: bool = False,
    clip_boxes: bool = True,
    with_metadata: bool = True,
) -> bytes:
    """The float32 TFLite bytes of an eval-mode Detector, post-process op and metadata included."""
    assert not model.training, "export an eval-mode model (BatchNorm statistics!)"
    assert len(labels) == model.num_classes
    size = model.spec.input_size
    wrapped = DetectorForExport(model, fold_normalization=fold_normalization, clip_boxes=clip_boxes)
    raw = convert(wrapped, size)
    options = postprocess_options(
        len(labels),
        max_detections=max_detections,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        use_regular_nms=use_regular_nms,
    )
    data = append_postprocess(raw, op_anchors(model), options, max_detections)
    if with_metadata:
        from metadata import add_detector_metadata

        mean, std = (0.0, 1.0) if fold_normalization else (MEAN, STD)
        data = add_detector_metadata(data, labels, mean=mean, std=std)
    return data


def main() -> None:
    from common import make_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="out/model_float.tflite")
    parser.add_argument("--fast-nms", action="store_true")
    parser.add_argument("--fold-normalization", action="store_true")
    parser.add_argument("--no-clip-boxes", action="store_true")
    parser.add_argument("--score-threshold", type=float, default=0.01)
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--no-metadata", action="store_true")
    args = parser.parse_args()
    model, labels = make_model()
    start = time.perf_counter()
    data = export_float(
        model,
        labels,
        max_detections=args.max_detections,
        score_threshold=args.score_threshold,
        use_regular_nms=not args.fast_nms,
        fold_normalization=args.fold_normalization,
        clip_boxes=not args.no_clip_boxes,
        with_metadata=not args.no_metadata,
    )
    elapsed = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(data)
    print(f"wrote {args.out}: {len(data)} bytes in {elapsed:.1f} s")


if __name__ == "__main__":
    main()

"""TFLite files for phones: float32 and full-integer (uint8 input), and running them.

Both files take one image ``image`` ``[1, S, S, 3]`` (NHWC, RGB, the picture stretched to the
model's input like :func:`app.detector.data.model_input` makes it) and end in the custom op
``TFLite_Detection_PostProcess``, whose four outputs are what MediaPipe Tasks' ObjectDetector,
the TFLite Task Library and AutoML's own files use: boxes ``[1, M, 4]`` (``ymin, xmin, ymax,
xmax`` relative to the image), classes ``[1, M]``, scores ``[1, M]`` and the count ``[1]``.
Their TFLite metadata carries the label map (exactly the model's labels, one per line) and the
input normalization, so those libraries load the file unchanged.

- float32: input is ``(pixel - 127) / 128``; the metadata says mean 127, std 128, so MediaPipe
  normalizes raw pixels itself (what AutoML's float files did).
- int8: weights and activations int8 (PT2E static quantization, calibrated on the model's
  own training images plus a black and a white frame so the whole pixel range is covered),
  and a uint8 input holding the raw pixels (scale 1/128, zero point 127: the same
  normalization), what AutoML shipped and what MediaPipe accepts: it refuses int8 inputs.

How (DESIGN.md §6): Google's converter (litert-torch) turns the network, up to sigmoid scores
and box encodings, into TFLite. The post-process op and the uint8 input cannot be asked of it,
so they are added by editing the flatbuffer with the schema classes ai-edge-litert ships; the
metadata is written with the metadata schema module mediapipe ships.

The op decodes centre-size encodings against anchors ``(y, x, h, w)`` with scales 1, so the
anchors are ours divided by the input size and the encodings are ``(dy, dx, log h, log w)`` in
strides. Boxes are decoded, clipped to the image and re-encoded in the graph first: the op's
NMS then sees the clipped boxes :func:`app.detector.predict.postprocess` sees, and MediaPipe,
which misplaces boxes crossing the top or left border, gets boxes inside the image. With
``use_regular_nms`` (per-class NMS, then the best 100) the op computes what our postprocess
does, except for the cap of candidates before NMS, which does not change the top 100.

LiteRT's interpreter loses one class in this op's regular NMS when it runs with 2 or more
threads (tensorflow/tensorflow#56058; seen up to ai-edge-litert 2.4.0.dev): files run here
with one thread. Exports are deterministic: tensor names are made positional, since the
converter's embed Python module paths, and the label archive has a fixed timestamp.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import zipfile
from collections.abc import Sequence
from typing import Any

import flatbuffers
import numpy as np
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils
from flatbuffers import flexbuffers
from torch import nn

from app.detector.bundle import load_bundle
from app.detector.export import ExportedFile
from app.detector.model import INPUT_MEAN, INPUT_STD, MAX_LOG_SIZE, Detector
from app.detector.predict import MAX_DETECTIONS, NMS_IOU, SCORE_THRESHOLD, build_model
from app.detector.types import Detections

TFLITE_INPUT = "image"
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
# The op's output tensors as TensorFlow names them, and their signature keys.
OUTPUT_NAMES = tuple(f"{POSTPROCESS_OP}{suffix}" for suffix in ("", ":1", ":2", ":3"))
OUTPUT_KEYS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
LABEL_FILE = "labelmap.txt"
METADATA_NAME = b"TFLITE_METADATA"
# The lowest metadata parser that reads tensor groups (what tflite-support writes for a detector).
METADATA_MIN_PARSER = "1.2.0"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# See the module notes: more threads make LiteRT drop a class in the op's NMS.
LITERT_THREADS = 1


class _OpInputs(nn.Module):
    """Head outputs to the op's inputs: box encodings ``(1, N, 4)`` as ``dy, dx, log h, log w``
    in strides, clipped to the image, and sigmoid scores ``(1, N, K)``."""

    def __init__(self, anchors: torch.Tensor, size: int) -> None:
        super().__init__()
        self.anchors: torch.Tensor
        self.register_buffer("anchors", anchors.clone(), persistent=False)
        self.size = float(size)

    def forward(
        self, logits: torch.Tensor, offsets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centre_anchor, stride = self.anchors[:, 0:2], self.anchors[:, 2:3]
        # decode_boxes, then the clip predict.postprocess applies, then back to encodings.
        centre = centre_anchor + offsets[..., 0:2] * stride
        half = torch.exp(offsets[..., 2:4].clamp(max=MAX_LOG_SIZE)) * stride * 0.5
        low = (centre - half).clamp(0.0, self.size)
        high = (centre + half).clamp(0.0, self.size)
        delta = ((low + high) * 0.5 - centre_anchor) / stride
        log_size = torch.log((high - low).clamp(min=1e-6) / stride)
        encodings = torch.cat(
            [delta[..., 1:2], delta[..., 0:1], log_size[..., 1:2], log_size[..., 0:1]], dim=-1
        )
        return encodings, torch.sigmoid(logits)


class _Encoded(nn.Module):
    """The detector on an NHWC image already normalized, ending in :class:`_OpInputs`."""

    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model
        self.op_inputs = _OpInputs(model.anchors, model.spec.input_size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, offsets = self.model.forward_normalized(image.permute(0, 3, 1, 2))
        return self.op_inputs(logits, offsets)


def _normalized(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` images to the float graph's NHWC input."""
    return ((images.float() - INPUT_MEAN) / INPUT_STD).permute(0, 2, 3, 1).contiguous()


def export_tflite(model_file: bytes) -> ExportedFile:
    """The model file as float32 TFLite with the post-process op and metadata."""
    litert_torch = _converter()
    bundle = load_bundle(model_file)
    network = build_model(bundle)
    size = bundle.input_size
    example = (torch.zeros(1, size, size, 3),)
    with torch.inference_mode():
        raw = litert_torch.convert(_Encoded(network).eval(), example).model_content()
    data = _finish(raw, network, bundle.labels)
    return ExportedFile(data=data, details=_details(bundle, "float32"))


def export_tflite_int8(model_file: bytes, calibration: Sequence[torch.Tensor]) -> ExportedFile:
    """The model file as full-integer TFLite with a uint8 input, calibrated on ``calibration``
    (uint8 ``(3, S, S)`` images as :func:`app.detector.data.model_input` makes them)."""
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ValueError("int8 export needs calibration images (the model's TRAIN split)")
    litert_torch = _converter()
    bundle = load_bundle(model_file)
    network = build_model(bundle)
    size = bundle.input_size
    # A black and a white frame: the quantized input covers every pixel value whatever
    # the photos hold, so the uint8 input below never saturates.
    extremes = [torch.full((3, size, size), value, dtype=torch.uint8) for value in (0, 255)]
    images = [*extremes, *calibration]
    for image in images:
        if tuple(image.shape) != (3, size, size):
            raise ValueError(f"calibration images must be (3, {size}, {size}), not {image.shape}")
    quantizer = _network_only(PT2EQuantizer)().set_global(
        _min_max_config(get_symmetric_quantization_config)
    )
    example = (_normalized(images[0][None]),)
    with torch.no_grad():
        graph = torch.export.export(_Encoded(network).eval(), example).module()
        graph = prepare_pt2e(graph, quantizer)
        for image in images:
            graph(_normalized(image[None]))
        _concat_ranges_shared(graph)
        graph = convert_pt2e(graph, fold_quantize=False)
        raw = litert_torch.convert(
            graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)
        ).model_content()
    data = _finish(_uint8_input(raw), network, bundle.labels)
    details = _details(bundle, "uint8")
    details["calibrationImages"] = len(calibration)
    return ExportedFile(data=data, details=details)


def _concat_ranges_shared(graph: Any) -> None:
    """Give every input of a concatenation the range of all of them, after calibration.

    The quantizer makes a concatenation share its first input's quantization, but each input
    was observed alone: the heads' outputs are concatenated stride 8 first, so the box
    offsets and class logits of every level took the stride-8 level's range. On a raccoon
    model whose stride-8 logits never reached 0 and whose stride-8 offsets stayed within
    ±0.33, larger objects' logits and log-sizes saturated and the int8 file found nothing
    (TEST mAP@0.5 0.0 against 0.84); with the ranges shared it scored as the float file.
    """
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
            continue
        inputs = [graph.get_submodule(a.target) for a in node.args[0] if a.op == "call_module"]
        observers = [module for module in inputs if hasattr(module, "min_val")]
        if len(observers) < 2 or any(o.min_val.numel() != 1 for o in observers):
            continue
        low = torch.stack([o.min_val for o in observers]).min()
        high = torch.stack([o.max_val for o in observers]).max()
        for observer in observers:
            observer.min_val.copy_(low)
            observer.max_val.copy_(high)


def _converter() -> Any:
    import litert_torch
    from litert_torch import _config

    # Its progress lines go to the terminal through rich; a worker logs its own.
    _config.config.show_progress = False
    return litert_torch


def _network_only(quantizer_class: Any) -> Any:
    """litert-torch's quantizer, leaving :class:`_OpInputs` (decode, clip, re-encode, sigmoid)
    in float: box corners in int8 steps of the whole image cost 4-6 points of fruit's TEST
    mAP@0.5, and the op reads float anyway. (Its ``set_module_name`` cannot exclude a module.)"""

    class NetworkOnly(quantizer_class):
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            for node in model.graph.nodes:
                if any(
                    "op_inputs" in path for path, _ in node.meta.get("nn_module_stack", {}).values()
                ):
                    node.meta.pop("quantization_annotation", None)
            return model

    return NetworkOnly


def _min_max_config(make_config: Any) -> Any:
    """litert-torch's symmetric per-channel int8 config with min/max activation observers,
    as TFLite's own calibrator uses; its default histogram observer takes minutes per dozen
    images on two cores for no gain measured here."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = make_config(is_per_channel=True)

    def with_min_max(spec: Any) -> Any:
        if spec is None:
            return None
        observer = MinMaxObserver.with_args(eps=2**-12)
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=observer)

    return dataclasses.replace(
        config,
        input_activation=with_min_max(config.input_activation),
        output_activation=with_min_max(config.output_activation),
    )


def _details(bundle: Any, input_dtype: str) -> dict[str, Any]:
    size = bundle.input_size
    return {
        "input": {
            "name": TFLITE_INPUT,
            "shape": [1, size, size, 3],
            "dtype": input_dtype,
            "normalization": {"mean": INPUT_MEAN, "std": INPUT_STD},
            "range": (
                "0-255 RGB pixels, the image stretched to the input size"
                if input_dtype == "uint8"
                else "(pixel - 127) / 128 of the image stretched to the input size"
            ),
        },
        "outputs": {
            "detection_boxes": "[1, M, 4] float32 yMin, xMin, yMax, xMax relative to the image",
            "detection_classes": "[1, M] float32 indices into labels",
            "detection_scores": "[1, M] float32, highest first",
            "num_detections": "[1] float32",
        },
        "postprocess": {
            "op": POSTPROCESS_OP,
            "maxDetections": MAX_DETECTIONS,
            "scoreThreshold": SCORE_THRESHOLD,
            "iouThreshold": NMS_IOU,
            "regularNms": True,
        },
        "interpreterThreads": LITERT_THREADS,
        "labels": list(bundle.labels),
        "modelType": str(bundle.model_type),
        "inputSize": size,
    }


def _finish(raw: bytes, network: Detector, labels: Sequence[str]) -> bytes:
    model = flatbuffer_utils.read_model_from_bytearray(raw)
    _append_postprocess(model, _op_anchors(network), num_classes=len(labels))
    _canonical_names(model)
    return _with_metadata(model, labels)


def _op_anchors(network: Detector) -> np.ndarray:
    """Our anchors ``(cx, cy, stride)`` in pixels as the op's ``(y, x, h, w)`` in [0, 1]."""
    anchors = network.anchors.detach().double().numpy()
    size = float(network.spec.input_size)
    stride = anchors[:, 2] / size
    return np.stack([anchors[:, 1] / size, anchors[:, 0] / size, stride, stride], axis=1).astype(
        np.float32
    )


def _postprocess_options(num_classes: int) -> bytes:
    builder = flexbuffers.Builder()
    with builder.Map():
        builder.Int("max_detections", MAX_DETECTIONS)
        builder.Int("max_classes_per_detection", 1)
        builder.Int("detections_per_class", MAX_DETECTIONS)
        builder.Bool("use_regular_nms", True)
        builder.Float("nms_score_threshold", SCORE_THRESHOLD)
        builder.Float("nms_iou_threshold", NMS_IOU)
        builder.Int("num_classes", num_classes)
        for scale in ("y_scale", "x_scale", "h_scale", "w_scale"):
            builder.Float(scale, 1.0)
    return bytes(builder.Finish())


def _add_buffer(model: schema.ModelT, data: bytes) -> int:
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _add_tensor(
    subgraph: schema.SubGraphT,
    name: str,
    shape: list[int],
    *,
    dtype: int = schema.TensorType.FLOAT32,
    buffer: int = 0,
) -> int:
    tensor = schema.TensorT()
    tensor.name = name.encode()
    tensor.shape = shape
    tensor.type = dtype
    tensor.buffer = buffer
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _add_operator_code(model: schema.ModelT, builtin: int, *, custom: str | None = None) -> int:
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = builtin
    code.version = 1 if custom else 2
    if custom:
        code.customCode = custom.encode()
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _append_postprocess(model: schema.ModelT, anchors: np.ndarray, *, num_classes: int) -> None:
    """The op after the converted network, whose outputs are (encodings, scores)."""
    subgraph = model.subgraphs[0]
    if len(subgraph.outputs) != 2:
        raise ValueError(f"the converted network has {len(subgraph.outputs)} outputs, not 2")
    encodings, scores = subgraph.outputs  # in _Encoded's order
    if subgraph.tensors[encodings].shape[-1] != 4:
        raise ValueError("the converted network's first output is not the box encodings")
    anchor_tensor = _add_tensor(
        subgraph, "anchors", list(anchors.shape), buffer=_add_buffer(model, anchors.tobytes())
    )
    shapes = ([1, MAX_DETECTIONS, 4], [1, MAX_DETECTIONS], [1, MAX_DETECTIONS], [1])
    outputs = [
        _add_tensor(subgraph, name, list(shape))
        for name, shape in zip(OUTPUT_NAMES, shapes, strict=True)
    ]
    op = schema.OperatorT()
    op.opcodeIndex = _add_operator_code(model, schema.BuiltinOperator.CUSTOM, custom=POSTPROCESS_OP)
    op.inputs = [encodings, scores, anchor_tensor]
    op.outputs = outputs
    op.customOptions = np.frombuffer(_postprocess_options(num_classes), dtype=np.uint8)
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    subgraph.operators.append(op)
    subgraph.outputs = outputs
    for signature in model.signatureDefs or []:
        signature.outputs = []
        for key, index in zip(OUTPUT_KEYS, outputs, strict=True):
            entry = schema.TensorMapT()
            entry.name = key.encode()
            entry.tensorIndex = index
            signature.outputs.append(entry)


def _uint8_input(raw: bytes) -> bytes:
    """A uint8 input holding raw pixels in front of the quantizer's int8 input, through a
    QUANTIZE op (what TensorFlow's converter does for ``inference_input_type=uint8``)."""
    model = flatbuffer_utils.read_model_from_bytearray(raw)
    subgraph = model.subgraphs[0]
    (old,) = subgraph.inputs
    if subgraph.tensors[old].type != schema.TensorType.INT8:
        raise ValueError("the quantized network's input is not int8")
    new = _add_tensor(
        subgraph, TFLITE_INPUT, list(subgraph.tensors[old].shape), dtype=schema.TensorType.UINT8
    )
    # uint8 value = pixel, representing (pixel - 127) / 128: the float graph's input.
    quantization = schema.QuantizationParametersT()
    quantization.scale = [1.0 / INPUT_STD]
    quantization.zeroPoint = [int(INPUT_MEAN)]
    subgraph.tensors[new].quantization = quantization
    op = schema.OperatorT()
    op.opcodeIndex = _add_operator_code(model, schema.BuiltinOperator.QUANTIZE)
    op.inputs = [new]
    op.outputs = [old]
    op.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
    op.builtinOptions = schema.QuantizeOptionsT()
    subgraph.operators.insert(0, op)
    subgraph.inputs = [new]
    for signature in model.signatureDefs or []:
        for entry in signature.inputs:
            if entry.tensorIndex == old:
                entry.tensorIndex = new
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _canonical_names(model: schema.ModelT) -> None:
    """Positional tensor names: the converter's embed the Python module path of the wrapper,
    which would make the bytes depend on how the exporting process was started."""
    subgraph = model.subgraphs[0]
    keep = {*subgraph.outputs, *subgraph.inputs}
    for index, tensor in enumerate(subgraph.tensors):
        if index in subgraph.inputs:
            tensor.name = TFLITE_INPUT.encode()
        elif index not in keep and tensor.name != b"anchors":
            tensor.name = f"t{index}".encode()
    for signature in model.signatureDefs or []:
        for entry in signature.inputs:
            entry.name = TFLITE_INPUT.encode()


def _metadata(*, mean: float, std: float) -> bytes:
    """The ModelMetadata flatbuffer tflite-support's object detector writer makes."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    def feature(name: str, description: str, *, ranged: bool = True) -> Any:
        tensor = md.TensorMetadataT()
        tensor.name, tensor.description = name, description
        tensor.content = md.ContentT()
        tensor.content.contentPropertiesType = md.ContentProperties.FeatureProperties
        tensor.content.contentProperties = md.FeaturePropertiesT()
        if ranged:  # the detections dimension of [1, M, ...]
            tensor.content.range = md.ValueRangeT()
            tensor.content.range.min = tensor.content.range.max = 2
        tensor.stats = md.StatsT()
        return tensor

    image = md.TensorMetadataT()
    image.name, image.description = TFLITE_INPUT, "Input image to be detected."
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    normalization = md.ProcessUnitT()
    normalization.optionsType = md.ProcessUnitOptions.NormalizationOptions
    normalization.options = md.NormalizationOptionsT()
    normalization.options.mean, normalization.options.std = [mean], [std]
    image.processUnits = [normalization]
    image.stats = md.StatsT()
    image.stats.min, image.stats.max = [(0.0 - mean) / std], [(255.0 - mean) / std]

    location = feature("location", "The locations of the detected boxes.")
    location.content.contentPropertiesType = md.ContentProperties.BoundingBoxProperties
    location.content.contentProperties = md.BoundingBoxPropertiesT()
    # ymin, xmin, ymax, xmax in [0, 1] (coordinate type RATIO, the default).
    location.content.contentProperties.index = [1, 0, 3, 2]
    location.content.contentProperties.type = md.BoundingBoxType.BOUNDARIES
    category = feature("category", "The categories of the detected boxes.")
    label_file = md.AssociatedFileT()
    label_file.name = LABEL_FILE
    label_file.description = "Labels for categories that the model can recognize."
    label_file.type = md.AssociatedFileType.TENSOR_VALUE_LABELS
    category.associatedFiles = [label_file]
    score = feature("score", "The scores of the detected boxes.")
    count = feature("number of detections", "The number of the detected boxes.", ranged=False)
    group = md.TensorGroupT()
    group.name, group.tensorNames = "detection_result", ["location", "category", "score"]

    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [location, category, score, count]
    subgraph.outputTensorGroups = [group]
    metadata = md.ModelMetadataT()
    metadata.name = "ObjectDetector"
    metadata.description = "Detects the model's labels in an image, with their boxes and scores."
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = METADATA_MIN_PARSER
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), file_identifier=b"M001")
    return bytes(builder.Output())


def _with_metadata(model: schema.ModelT, labels: Sequence[str]) -> bytes:
    """The file: the model with its metadata buffer, then the label map as a zip archive
    appended (how TFLite metadata packs associated files)."""
    for label in labels:
        if not label or "\n" in label or "\r" in label:
            raise ValueError(f"label {label!r} cannot go in a TFLite label map")
    model.metadata = [m for m in model.metadata or [] if m.name != METADATA_NAME]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = _add_buffer(model, _metadata(mean=INPUT_MEAN, std=INPUT_STD))
    model.metadata.append(entry)
    out = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        info = zipfile.ZipInfo(LABEL_FILE, date_time=_ZIP_TIME)
        info.external_attr = 0o600 << 16
        archive.writestr(info, "".join(f"{label}\n" for label in labels).encode())
    return out.getvalue()


def read_labels(data: bytes) -> tuple[str, ...]:
    """The label map packed in a TFLite file's metadata."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            text = archive.read(LABEL_FILE).decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"the TFLite file has no {LABEL_FILE} in its metadata") from exc
    return tuple(line for line in text.splitlines() if line)


class TflitePredictor:
    """LiteRT's interpreter over one of our TFLite files, predicting like predict_images."""

    def __init__(self, data: bytes, *, threads: int = LITERT_THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_content=data, num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"not a TFLite file LiteRT can run: {exc}") from exc
        self.labels = read_labels(data)
        (image,) = self.interpreter.get_input_details()
        self._input = image["index"]
        self.quantized = image["dtype"] == np.uint8
        self.input_size = int(image["shape"][1])
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        if set(OUTPUT_NAMES) - set(outputs):
            raise ValueError(f"the TFLite file does not end in {POSTPROCESS_OP}")
        self._outputs = [outputs[name] for name in OUTPUT_NAMES]
        self._lock = threading.Lock()  # an interpreter runs one image at a time

    def predict(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        """Detections for uint8 (3, S, S) images already resized to the model's input."""
        results = []
        for image in images:
            batch = (
                image[None].permute(0, 2, 3, 1).contiguous().numpy()
                if self.quantized
                else _normalized(image[None]).numpy()
            )
            with self._lock:
                self.interpreter.set_tensor(self._input, batch)
                self.interpreter.invoke()
                boxes, classes, scores, count = (
                    self.interpreter.get_tensor(index) for index in self._outputs
                )
            kept = int(count[0])
            results.append(
                Detections(
                    boxes=boxes[0, :kept][:, [1, 0, 3, 2]].astype(np.float32),
                    scores=scores[0, :kept].astype(np.float32),
                    labels=classes[0, :kept].astype(np.int64),
                )
            )
        return results

"""Checking a detector ``.tflite`` file a user brings (AutoML Vision Edge's, or one of ours).

:func:`inspect_tflite` loads the bytes in LiteRT's interpreter and accepts only what the
service can serve and phones can load (MediaPipe Tasks' ObjectDetector, the TFLite Task
Library), the shape AutoML's files and :mod:`app.detector.tflite`'s exports have:

- one input ``[1, S, S, 3]``, float32, uint8 or int8. A non-square input is refused: the
  service stretches every image to a square ``S x S`` (:func:`app.detector.data.model_input`).
  An int8 input is accepted (the file is a valid detector) but MediaPipe and the Task Library
  refuse it, and :class:`app.detector.tflite.TflitePredictor` feeds only float32 or uint8.
- one ``TFLite_Detection_PostProcess`` op whose four outputs (boxes, classes, scores, count)
  are outputs of the graph. Their tensor names are reported: our files and TensorFlow's
  converter name them after the op (what :class:`app.detector.tflite.TflitePredictor` looks
  up), but a converter working from a signature may name them after it.
- a label map: the label file the TFLite metadata associates with an output tensor, read
  from the zip archive appended to the flatbuffer; without metadata naming one, the archive's
  only ``.txt`` file. A leading ``???`` or ``background`` placeholder line (label maps made
  for the TensorFlow Object Detection API often have one) is dropped; what remains must be
  non-empty, without blank or duplicate names, and as long as the op's ``num_classes``.

Raw outputs (box encodings and class scores with no post-process op) are refused: decoding
them needs the anchors and the box coding of the network that made them, which the file does
not hold, so neither this service nor a phone's detector library could turn them into boxes.

Every refusal is a :class:`TfliteRejected` whose ``code`` a program can branch on and whose
message tells the user what to change. Nothing here knows of HTTP or the database.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import numpy as np
from flatbuffers import flexbuffers

# As app.detector.tflite writes them, repeated so that importing this module (the API
# process checks uploads) does not import torch and the converter with the exporter.
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
METADATA_NAME = b"TFLITE_METADATA"
# One thread: LiteRT loses a class in the op's regular NMS with more (see app.detector.tflite).
LITERT_THREADS = 1

MAX_TFLITE_BYTES = 200 * 1024 * 1024
# A label file is a few kilobytes; anything larger is not one (and may be a zip bomb).
MAX_LABEL_FILE_BYTES = 1024 * 1024
# Placeholder first lines for the background class, compared case-insensitively.
PLACEHOLDER_LABELS = frozenset({"???", "background"})
_TFLITE_IDENTIFIER = b"TFL3"
_MB = 1024 * 1024

InputDtype = Literal["float32", "uint8", "int8"]
_INPUT_DTYPES: dict[np.dtype[Any], InputDtype] = {
    np.dtype(np.float32): "float32",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int8): "int8",
}


class TfliteRejected(ValueError):
    """A file that is not a detector this service can serve; ``code`` names the reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Normalization:
    """The float input's normalization from the metadata: ``(pixel - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class TfliteFacts:
    """What :func:`inspect_tflite` found in a file it accepted."""

    labels: tuple[str, ...]
    input_size: int
    input_dtype: InputDtype
    # Always "postprocess": raw outputs are refused (see the module notes).
    output_kind: Literal["postprocess"]
    # Tensor names of the op's boxes, classes, scores and count outputs, in that order.
    output_names: tuple[str, str, str, str]
    size_bytes: int
    sha256: str
    has_metadata: bool
    label_file: str
    normalization: Normalization | None


@dataclass(frozen=True)
class _Postprocess:
    outputs: tuple[int, int, int, int]
    num_classes: int | None


def inspect_tflite(data: bytes, *, max_bytes: int = MAX_TFLITE_BYTES) -> TfliteFacts:
    """What a detector ``.tflite`` file holds; :class:`TfliteRejected` if it cannot be served."""
    if not data:
        raise TfliteRejected("NOT_TFLITE", "the file is empty; upload the model's .tflite file")
    if len(data) > max_bytes:
        raise TfliteRejected(
            "TOO_LARGE",
            f"the file is {len(data) / _MB:.1f} MB; the limit is {max_bytes / _MB:.0f} MB",
        )
    if data[4:8] != _TFLITE_IDENTIFIER:
        raise TfliteRejected(
            "NOT_TFLITE", "the file is not a TensorFlow Lite model (no TFL3 identifier)"
        )
    interpreter = _load(data)
    input_size, input_dtype = _check_input(interpreter)
    model = _read_model(data)
    postprocess = _find_postprocess(model, interpreter)
    metadata = _read_metadata(data, model)
    label_file, labels = _read_label_map(data, metadata)
    if postprocess.num_classes is not None and postprocess.num_classes != len(labels):
        raise TfliteRejected(
            "LABEL_COUNT_MISMATCH",
            f"{POSTPROCESS_OP} is configured for {postprocess.num_classes} classes but the "
            f"label map {label_file} has {len(labels)} labels; they must be equal",
        )
    _run_once(interpreter, postprocess)
    return TfliteFacts(
        labels=labels,
        input_size=input_size,
        input_dtype=input_dtype,
        output_kind="postprocess",
        output_names=_output_names(interpreter, postprocess),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        has_metadata=metadata is not None,
        label_file=label_file,
        normalization=_normalization(metadata),
    )


def _load(data: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=data, num_threads=LITERT_THREADS)
        interpreter.allocate_tensors()
    except Exception as exc:  # LiteRT raises ValueError or RuntimeError, text from C++
        raise TfliteRejected(
            "CANNOT_LOAD",
            f"LiteRT cannot load the model ({_first_line(exc)}); the file is damaged or uses "
            "operations LiteRT does not have",
        ) from exc
    return interpreter


def _check_input(interpreter: Any) -> tuple[int, InputDtype]:
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise TfliteRejected(
            "BAD_INPUT", f"the model has {len(inputs)} inputs; a detector takes one image"
        )
    (image,) = inputs
    shape = [int(d) for d in image["shape_signature"]]
    if len(shape) != 4 or shape[0] not in (1, -1) or shape[3] != 3 or min(shape[1:3]) <= 0:
        raise TfliteRejected(
            "BAD_INPUT",
            f"the model's input has shape {shape}; a detector takes one RGB image of a fixed "
            "size, [1, height, width, 3]",
        )
    height, width = shape[1:3]
    if height != width:
        raise TfliteRejected(
            "BAD_INPUT",
            f"the model's input is {height}x{width} (height x width); only square inputs are "
            "served, since images are stretched to the model's square input",
        )
    dtype = _INPUT_DTYPES.get(np.dtype(image["dtype"]))
    if dtype is None:
        raise TfliteRejected(
            "BAD_INPUT",
            f"the model's input is {np.dtype(image['dtype']).name}; a detector's input must be "
            "float32, uint8 or int8",
        )
    return height, dtype


def _read_model(data: bytes) -> Any:
    """The flatbuffer's root, read in place; safe to walk once LiteRT's verifier accepted it."""
    from ai_edge_litert import schema_py_generated as schema

    return schema.Model.GetRootAs(data, 0)


def _find_postprocess(model: Any, interpreter: Any) -> _Postprocess:
    """The one post-process op of the main graph, whose four outputs are graph outputs."""
    from ai_edge_litert import schema_py_generated as schema

    subgraph = model.Subgraphs(0)
    custom_codes = [model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())]
    ops = [
        subgraph.Operators(i)
        for i in range(subgraph.OperatorsLength())
        if custom_codes[subgraph.Operators(i).OpcodeIndex()] == POSTPROCESS_OP.encode()
    ]
    graph_outputs = [int(i) for i in _indices(subgraph.OutputsAsNumpy())]
    if not ops:
        _refuse_without_postprocess(interpreter)
    if len(ops) > 1:
        raise TfliteRejected(
            "NO_DETECTION_SIGNATURE",
            f"the model has {len(ops)} {POSTPROCESS_OP} ops; a detector ends in exactly one",
        )
    (op,) = ops
    outputs = [int(i) for i in _indices(op.OutputsAsNumpy())]
    if len(outputs) != 4 or not set(outputs) <= set(graph_outputs):
        raise TfliteRejected(
            "NO_DETECTION_SIGNATURE",
            f"the outputs of the model's {POSTPROCESS_OP} op are not all outputs of the model; "
            "a detector's outputs are the op's four (boxes, classes, scores, count)",
        )
    num_classes = None
    if op.CustomOptionsFormat() == schema.CustomOptionsFormat.FLEXBUFFERS:
        num_classes = _num_classes(op.CustomOptionsAsNumpy())
    boxes, classes, scores, count = outputs
    return _Postprocess(outputs=(boxes, classes, scores, count), num_classes=num_classes)


def _num_classes(options: Any) -> int | None:
    """The op's ``num_classes`` option; None when its options cannot be read (the interpreter
    accepted them, so the check against the labels is skipped rather than refused)."""
    if isinstance(options, int):  # the generated code returns 0 when there are none
        return None
    try:
        value = flexbuffers.GetRoot(bytearray(options.tobytes())).AsMap["num_classes"]
        return int(value.AsInt)
    except (KeyError, TypeError, ValueError, IndexError, struct.error):
        return None


def _refuse_without_postprocess(interpreter: Any) -> NoReturn:
    shapes = [[int(d) for d in o["shape"]] for o in interpreter.get_output_details()]
    described = ", ".join(str(s) for s in shapes)
    count = f"{len(shapes)} output{'s' if len(shapes) != 1 else ''}"
    if _looks_raw(shapes):
        raise TfliteRejected(
            "RAW_OUTPUTS",
            f"the model ends in raw box encodings and class scores ({described}) without the "
            f"{POSTPROCESS_OP} op; decoding them needs anchors the file does not hold. Export "
            "the detector with the post-process op (AutoML's TFLite export, or TensorFlow's "
            "export_tflite_graph with add_postprocessing_op)",
        )
    raise TfliteRejected(
        "NO_DETECTION_SIGNATURE",
        f"the model has {count} ({described}); a detector needs the four outputs of "
        f"{POSTPROCESS_OP} (boxes, classes, scores, count)",
    )


def _looks_raw(shapes: list[list[int]]) -> bool:
    """Two outputs ``[1, N, 4]`` and ``[1, N, K]``: an SSD-style head before post-processing."""
    if len(shapes) != 2 or any(len(s) != 3 for s in shapes):
        return False
    boxes, scores = sorted(shapes, key=lambda s: s[2] != 4)
    return boxes[2] == 4 and boxes[:2] == scores[:2]


def _read_metadata(data: bytes, model: Any) -> Any | None:
    """The ``TFLITE_METADATA`` buffer parsed with the metadata schema, or None when absent."""
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != METADATA_NAME:
            continue
        buffer = model.Buffers(entry.Buffer())
        if buffer.Offset() > 1:  # files over 2 GB keep buffers after the flatbuffer
            raw = data[buffer.Offset() : buffer.Offset() + buffer.Size()]
        else:
            raw = buffer.DataAsNumpy()
            raw = b"" if isinstance(raw, int) else raw.tobytes()
        return _parse_metadata(raw)
    return None


def _parse_metadata(raw: bytes) -> Any:
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    try:
        if not md.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
            raise ValueError("no M001 identifier")
        return md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAs(raw, 0))
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise TfliteRejected(
            "BAD_METADATA",
            "the model's TFLite metadata cannot be read; write it again with a TFLite metadata "
            "writer (tflite-support or MediaPipe)",
        ) from exc


def _label_file_names(metadata: Any | None) -> list[str]:
    """The label files the metadata associates with output tensors, unlocalized ones first."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    if metadata is None:
        return []
    kinds = (md.AssociatedFileType.TENSOR_VALUE_LABELS, md.AssociatedFileType.TENSOR_AXIS_LABELS)
    files = [
        file
        for subgraph in metadata.subgraphMetadata or []
        for tensor in subgraph.outputTensorMetadata or []
        for file in tensor.associatedFiles or []
        if file.type in kinds and file.name
    ]
    files.sort(key=lambda file: (file.type != kinds[0], bool(file.locale)))
    return list(dict.fromkeys(_text(file.name) for file in files))


def _read_label_map(data: bytes, metadata: Any | None) -> tuple[str, tuple[str, ...]]:
    named = _label_file_names(metadata)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        message = (
            f"the metadata names the label file {named[0]} but the file carries no readable "
            "archive of associated files; pack them with a TFLite metadata writer"
            if named
            else _no_label_map(metadata, [])
        )
        raise TfliteRejected("NO_LABEL_MAP", message) from exc
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        if named:
            name = next((n for n in named if n in members), None)
            if name is None:
                raise TfliteRejected(
                    "NO_LABEL_MAP",
                    f"the metadata names the label file {named[0]} but the file does not "
                    "carry it; pack the metadata's associated files with the model",
                )
        else:
            texts = [n for n in members if n.lower().endswith(".txt")]
            if len(texts) != 1:
                raise TfliteRejected("NO_LABEL_MAP", _no_label_map(metadata, texts))
            (name,) = texts
        if members[name].file_size > MAX_LABEL_FILE_BYTES:
            raise TfliteRejected(
                "BAD_LABEL_MAP", f"the label file {name} is over {MAX_LABEL_FILE_BYTES} bytes"
            )
        try:
            raw = archive.read(members[name])
        # Damaged data, encryption or an unsupported compression method.
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
            raise TfliteRejected(
                "BAD_LABEL_MAP", f"the label file {name} cannot be unpacked ({_first_line(exc)})"
            ) from exc
    return name, _parse_labels(name, raw)


def _no_label_map(metadata: Any | None, texts: list[str]) -> str:
    where = (
        "the model has no TFLite metadata"
        if metadata is None
        else "the model's TFLite metadata names no label file"
    )
    if texts:
        where += f" and it carries several text files ({', '.join(sorted(texts))})"
    return (
        f"{where}; add metadata with the label map (one label per line) using a TFLite "
        "metadata writer for object detectors (tflite-support or MediaPipe)"
    )


def _parse_labels(name: str, raw: bytes) -> tuple[str, ...]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TfliteRejected("BAD_LABEL_MAP", f"the label file {name} is not UTF-8 text") from exc
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if lines and lines[0].lower() in PLACEHOLDER_LABELS:
        lines = lines[1:]
    if not lines:
        raise TfliteRejected("EMPTY_LABEL_MAP", f"the label file {name} holds no labels")
    # A line's position is its class index, so a blank line cannot simply be skipped.
    blank = [number for number, line in enumerate(lines, start=1) if not line]
    if blank:
        raise TfliteRejected(
            "BAD_LABEL_MAP",
            f"the label file {name} has blank lines among its labels (label {blank[0]}); "
            "every class needs a name",
        )
    duplicates = [label for label, times in Counter(lines).items() if times > 1]
    if duplicates:
        listed = ", ".join(repr(label) for label in duplicates)
        raise TfliteRejected(
            "DUPLICATE_LABELS",
            f"the label file {name} names {listed} more than once; every class needs its own name",
        )
    return tuple(lines)


def _run_once(interpreter: Any, postprocess: _Postprocess) -> None:
    """One inference on a blank image, proving the file runs and its outputs are detections."""
    (image,) = interpreter.get_input_details()
    try:
        interpreter.set_tensor(image["index"], np.zeros(image["shape"], dtype=image["dtype"]))
        interpreter.invoke()
        boxes, classes, scores, count = (
            interpreter.get_tensor(index) for index in postprocess.outputs
        )
    except Exception as exc:  # LiteRT's kernels report failures as RuntimeError or ValueError
        raise TfliteRejected(
            "DOES_NOT_RUN", f"the model fails when run on a blank image ({_first_line(exc)})"
        ) from exc
    detections = boxes.shape[1] if boxes.ndim == 3 else -1
    shapes_ok = (
        boxes.shape == (1, detections, 4)
        and classes.shape == (1, detections)
        and scores.shape == (1, detections)
        and count.size == 1
    )
    if not shapes_ok or not 0 <= float(count.reshape(-1)[0]) <= detections:
        raise TfliteRejected(
            "DOES_NOT_RUN",
            f"the model's {POSTPROCESS_OP} outputs have shapes {list(boxes.shape)}, "
            f"{list(classes.shape)}, {list(scores.shape)}, {list(count.shape)}; expected "
            "[1, M, 4], [1, M], [1, M] and [1] with a count from 0 to M",
        )


def _output_names(interpreter: Any, postprocess: _Postprocess) -> tuple[str, str, str, str]:
    names = {d["index"]: d["name"] for d in interpreter.get_output_details()}
    boxes, classes, scores, count = (names[index] for index in postprocess.outputs)
    return boxes, classes, scores, count


def _normalization(metadata: Any | None) -> Normalization | None:
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    if metadata is None:
        return None
    for subgraph in metadata.subgraphMetadata or []:
        for tensor in subgraph.inputTensorMetadata or []:
            for unit in tensor.processUnits or []:
                if unit.optionsType == md.ProcessUnitOptions.NormalizationOptions:
                    options = unit.options
                    return Normalization(
                        mean=tuple(float(v) for v in options.mean or ()),
                        std=tuple(float(v) for v in options.std or ()),
                    )
    return None


def _indices(values: Any) -> Any:
    """A flatbuffer int vector; the generated code returns 0 for an absent one."""
    return () if isinstance(values, int) else values


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

"""Pure-Python TFLite metadata for an object detector (no tflite-support, no TensorFlow).

Writes what tflite-support 0.4.4's ``object_detector.MetadataWriter.create_for_inference``
writes (compared field by field in verify_metadata.py): ModelMetadata (file identifier M001,
min_parser_version 1.2.0) in a buffer named TFLITE_METADATA, and the label map as a zip
archive appended to the flatbuffer. Unlike tflite-support, the zip entry has a fixed
timestamp, so the output is byte-for-byte reproducible.

The schema classes come from the ``metadata_schema_py_generated`` module that mediapipe (and
tflite-support) ship; a project could vendor that one generated file (Apache-2.0).
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

try:
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md
except ImportError:  # pragma: no cover
    from tflite_support import metadata_schema_py_generated as md

METADATA_NAME = b"TFLITE_METADATA"
LABEL_FILE = "labelmap.txt"
# The lowest metadata parser that understands tensor groups (what tflite-support computes).
MIN_PARSER_VERSION = "1.2.0"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _feature(name: str, description: str, *, ranged: bool = True) -> md.TensorMetadataT:
    tensor = md.TensorMetadataT()
    tensor.name = name
    tensor.description = description
    tensor.content = md.ContentT()
    tensor.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    tensor.content.contentProperties = md.FeaturePropertiesT()
    if ranged:
        tensor.content.range = md.ValueRangeT()
        tensor.content.range.min = 2
        tensor.content.range.max = 2
    tensor.stats = md.StatsT()
    return tensor


def build_metadata(
    *, mean: float, std: float, input_min: float, input_max: float, name: str = "ObjectDetector"
) -> bytes:
    image = md.TensorMetadataT()
    image.name = "image"
    image.description = "Input image to be detected."
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    norm = md.ProcessUnitT()
    norm.optionsType = md.ProcessUnitOptions.NormalizationOptions
    norm.options = md.NormalizationOptionsT()
    norm.options.mean = [mean]
    norm.options.std = [std]
    image.processUnits = [norm]
    image.stats = md.StatsT()
    image.stats.max = [input_max]
    image.stats.min = [input_min]

    location = _feature("location", "The locations of the detected boxes.")
    location.content.contentPropertiesType = md.ContentProperties.BoundingBoxProperties
    location.content.contentProperties = md.BoundingBoxPropertiesT()
    location.content.contentProperties.index = [1, 0, 3, 2]  # ymin,xmin,ymax,xmax -> l,t,r,b
    location.content.contentProperties.type = md.BoundingBoxType.BOUNDARIES
    # coordinateType left at its default, RATIO: boxes are normalized to [0, 1].

    category = _feature("category", "The categories of the detected boxes.")
    labels = md.AssociatedFileT()
    labels.name = LABEL_FILE
    labels.description = "Labels for categories that the model can recognize."
    labels.type = md.AssociatedFileType.TENSOR_VALUE_LABELS
    category.associatedFiles = [labels]

    score = _feature("score", "The scores of the detected boxes.")
    count = _feature("number of detections", "The number of the detected boxes.", ranged=False)

    group = md.TensorGroupT()
    group.name = "detection_result"
    group.tensorNames = ["location", "category", "score"]

    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [location, category, score, count]
    subgraph.outputTensorGroups = [group]

    model = md.ModelMetadataT()
    model.name = name
    model.description = (
        "Identify which of a known set of objects might be present and provide information "
        "about their positions within the given image or a video stream."
    )
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"M001")
    return bytes(builder.Output())


def _label_text(labels: list[str]) -> bytes:
    for label in labels:
        if not label or "\n" in label or "\r" in label:
            raise ValueError(f"label {label!r} cannot go in a label map")
    return ("\n".join(labels) + "\n").encode("utf-8")


def add_detector_metadata(
    tflite: bytes,
    labels: list[str],
    *,
    mean: float,
    std: float,
    name: str = "ObjectDetector",
    input_range: tuple[float, float] = (0.0, 255.0),
) -> bytes:
    """The model with detector metadata and the label map; replaces existing metadata."""
    from export_tflite import _read_model, _write_model

    metadata = build_metadata(
        mean=mean,
        std=std,
        input_min=(input_range[0] - mean) / std,
        input_max=(input_range[1] - mean) / std,
        name=name,
    )
    model = _read_model(tflite)
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    out = io.BytesIO(_write_model(model))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        info = zipfile.ZipInfo(LABEL_FILE, date_time=_ZIP_TIME)
        info.external_attr = 0o600 << 16
        archive.writestr(info, _label_text(labels))
    return out.getvalue()

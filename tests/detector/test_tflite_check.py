"""Checking a user's detector .tflite file: our own exports pass with their facts; files the
service could not serve are refused with a code and a message naming what to change.

The two exports take most of this module's time (the converter traces the whole network)."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch
from ai_edge_litert.tools import flatbuffer_utils
from torch import nn

from app.detector.tflite import (
    LABEL_FILE,
    METADATA_NAME,
    OUTPUT_NAMES,
)
from app.detector.tflite_check import TfliteRejected, inspect_tflite

LABELS = ("red", "green", "blue")


def without_archive(data: bytes) -> bytes:
    """The flatbuffer (metadata included) without the label archive appended to it."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        start = min(info.header_offset for info in archive.infolist())
    return data[:start]


def with_archive(data: bytes, files: dict[str, str]) -> bytes:
    """``data`` with a zip of ``files`` appended, as TFLite metadata packs associated files."""
    out = io.BytesIO(data)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return out.getvalue()


def relabelled(data: bytes, text: str) -> bytes:
    return with_archive(without_archive(data), {LABEL_FILE: text})


def without_metadata(data: bytes) -> bytes:
    """Rewritten without the TFLITE_METADATA entry (and so without the archive too)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    model.metadata = [entry for entry in model.metadata if entry.name != METADATA_NAME]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def with_metadata_bytes(data: bytes, metadata: bytes) -> bytes:
    """Rewritten with ``metadata`` in place of the TFLITE_METADATA buffer (archive dropped)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    (entry,) = [entry for entry in model.metadata if entry.name == METADATA_NAME]
    model.buffers[entry.buffer].data = np.frombuffer(metadata, dtype=np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def converted(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    """A small torch module as TFLite, with litert-torch as the exporter uses it."""
    import litert_torch

    with torch.inference_mode():
        return litert_torch.convert(module.eval(), (torch.zeros(shape),)).model_content()


class ConvNhwc(nn.Module):
    """Not a detector: an image in, a feature map out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image.permute(0, 3, 1, 2))


class RawHead(nn.Module):
    """An SSD-style head before post-processing: box encodings [1, N, 4], scores [1, N, K]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4 + 3, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.conv(image.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return out[..., :4], torch.sigmoid(out[..., 4:])


def rejection(data: bytes, **kwargs: int) -> TfliteRejected:
    with pytest.raises(TfliteRejected) as caught:
        inspect_tflite(data, **kwargs)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == caught.value.message
    return caught.value


def test_our_float_export_passes_with_its_facts(float_tflite: bytes) -> None:
    facts = inspect_tflite(float_tflite)
    assert facts.labels == LABELS
    assert facts.input_size == 320 and facts.input_dtype == "float32"
    assert facts.output_kind == "postprocess" and facts.output_names == OUTPUT_NAMES
    assert facts.size_bytes == len(float_tflite)
    assert facts.sha256 == hashlib.sha256(float_tflite).hexdigest()
    assert facts.has_metadata and facts.label_file == LABEL_FILE
    assert facts.normalization is not None
    assert (facts.normalization.mean, facts.normalization.std) == ((127.0,), (128.0,))


def test_our_int8_export_passes_with_a_uint8_input(int8_tflite: bytes) -> None:
    facts = inspect_tflite(int8_tflite)
    assert facts.labels == LABELS
    assert facts.input_size == 320 and facts.input_dtype == "uint8"
    assert facts.output_names == OUTPUT_NAMES and facts.has_metadata


def test_a_placeholder_first_label_and_whitespace_are_dropped(float_tflite: bytes) -> None:
    for text in ("???\nred\ngreen\nblue\n", "background\r\n red \r\ngreen\t\r\nblue\r\n\r\n"):
        assert inspect_tflite(relabelled(float_tflite, text)).labels == LABELS


def test_without_metadata_the_archives_only_text_file_is_the_label_map(float_tflite: bytes) -> None:
    data = with_archive(without_metadata(float_tflite), {"dict.txt": "red\ngreen\nblue\n"})
    facts = inspect_tflite(data)
    assert facts.labels == LABELS and facts.label_file == "dict.txt"
    assert not facts.has_metadata and facts.normalization is None


def test_files_that_are_not_tflite_are_refused(float_tflite: bytes) -> None:
    empty = rejection(b"")
    assert empty.code == "NOT_TFLITE" and "empty" in empty.message
    noise = rejection(np.random.default_rng(1).bytes(4096))
    assert noise.code == "NOT_TFLITE"
    assert noise.message == "the file is not a TensorFlow Lite model (no TFL3 identifier)"
    truncated = rejection(float_tflite[:5000])
    assert truncated.code == "CANNOT_LOAD"
    assert truncated.message.startswith("LiteRT cannot load the model (")


def test_a_file_over_the_limit_is_refused_before_loading(float_tflite: bytes) -> None:
    error = rejection(float_tflite, max_bytes=1024 * 1024)
    assert error.code == "TOO_LARGE"
    assert error.message == f"the file is {len(float_tflite) / 2**20:.1f} MB; the limit is 1 MB"
    assert inspect_tflite(float_tflite, max_bytes=len(float_tflite)).size_bytes == len(float_tflite)


def test_a_model_that_is_not_a_detector_is_refused() -> None:
    error = rejection(converted(ConvNhwc(), (1, 16, 16, 3)))
    assert error.code == "NO_DETECTION_SIGNATURE"
    assert error.message == (
        "the model has 1 output ([1, 4, 14, 14]); a detector needs the four outputs of "
        "TFLite_Detection_PostProcess (boxes, classes, scores, count)"
    )


def test_raw_box_encodings_and_scores_are_refused() -> None:
    error = rejection(converted(RawHead(), (1, 8, 8, 3)))
    assert error.code == "RAW_OUTPUTS"
    assert error.message.startswith(
        "the model ends in raw box encodings and class scores ([1, 64, 4], [1, 64, 3]) "
        "without the TFLite_Detection_PostProcess op; decoding them needs anchors"
    )


def test_inputs_other_than_one_square_rgb_image_are_refused() -> None:
    nchw = rejection(converted(nn.Conv2d(3, 4, 3), (1, 3, 16, 16)))
    assert nchw.code == "BAD_INPUT"
    assert nchw.message.startswith("the model's input has shape [1, 3, 16, 16]; a detector")
    wide = rejection(converted(ConvNhwc(), (1, 16, 24, 3)))
    assert wide.code == "BAD_INPUT"
    assert wide.message.startswith("the model's input is 16x24 (height x width); only square")


def test_a_file_without_its_label_map_is_refused(float_tflite: bytes) -> None:
    bare = rejection(without_metadata(float_tflite))
    assert bare.code == "NO_LABEL_MAP"
    assert bare.message.startswith("the model has no TFLite metadata; add metadata with the label")
    cut = rejection(without_archive(float_tflite))
    assert cut.code == "NO_LABEL_MAP"
    assert cut.message.startswith(
        f"the metadata names the label file {LABEL_FILE} but the file carries no readable archive"
    )
    renamed = rejection(with_archive(without_archive(float_tflite), {"dict.txt": "red\n"}))
    assert renamed.code == "NO_LABEL_MAP"
    assert renamed.message.startswith(
        f"the metadata names the label file {LABEL_FILE} but the file does not carry it"
    )


def test_unreadable_metadata_is_refused(float_tflite: bytes) -> None:
    error = rejection(with_metadata_bytes(float_tflite, b"not a metadata flatbuffer"))
    assert error.code == "BAD_METADATA"
    assert error.message.startswith("the model's TFLite metadata cannot be read")


def test_bad_label_maps_are_refused(float_tflite: bytes) -> None:
    duplicated = rejection(relabelled(float_tflite, "red\ngreen\nred \n"))
    assert duplicated.code == "DUPLICATE_LABELS"
    assert duplicated.message == (
        f"the label file {LABEL_FILE} names 'red' more than once; every class needs its own name"
    )
    for text in ("", "\n \n", "???\n"):
        empty = rejection(relabelled(float_tflite, text))
        assert empty.code == "EMPTY_LABEL_MAP"
        assert empty.message == f"the label file {LABEL_FILE} holds no labels"
    gap = rejection(relabelled(float_tflite, "red\n\nblue\n"))
    assert gap.code == "BAD_LABEL_MAP" and "blank lines" in gap.message


def test_a_label_count_other_than_the_ops_classes_is_refused(float_tflite: bytes) -> None:
    error = rejection(relabelled(float_tflite, "red\ngreen\n"))
    assert error.code == "LABEL_COUNT_MISMATCH"
    assert error.message == (
        "TFLite_Detection_PostProcess is configured for 3 classes but the label map "
        f"{LABEL_FILE} has 2 labels; they must be equal"
    )

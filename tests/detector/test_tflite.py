"""The TFLite exports: what PyTorch detects, in the shape MediaPipe and LiteRT load, with the
model's labels, deterministic; the int8 file takes uint8 pixels. (The int8 file's quality is
measured on a trained model, in tests/training/test_end_to_end.py: this model's head is
random, and its scores are too fragile for int8 to mean anything.)"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from app.detector.bundle import load_bundle
from app.detector.data import ImageCache, plain_example
from app.detector.evaluate import evaluate
from app.detector.predict import build_model, predict_images
from app.detector.tflite import (
    LABEL_FILE,
    OUTPUT_KEYS,
    TflitePredictor,
    export_tflite,
    export_tflite_int8,
    read_labels,
)
from tests.detector.test_export import LABELS, assert_same_detections, spread_model_file
from tests.support.mediapipe import assert_mediapipe_agrees, mediapipe_detections


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return spread_model_file()


@pytest.fixture(scope="module")
def images(shapes) -> list[torch.Tensor]:
    cache = ImageCache(shapes.samples, shapes.read, 320)
    return [plain_example(cache[s.key], s, 320).image for s in shapes.samples[:12]]


@pytest.fixture(scope="module")
def float_file(model_file: bytes) -> bytes:
    return export_tflite(model_file).data


@pytest.fixture(scope="module")
def int8_file(model_file: bytes, images: list[torch.Tensor]) -> bytes:
    return export_tflite_int8(model_file, images).data


def test_litert_detects_what_pytorch_detects(model_file, float_file, images) -> None:
    network = build_model(load_bundle(model_file))
    expected = predict_images(network, images, batch_size=1)
    got = TflitePredictor(float_file).predict(images)
    assert sum(len(d.scores) for d in expected) > 0
    for want, have in zip(expected, got, strict=True):
        assert_same_detections(want, have)


def test_mediapipe_loads_the_float_file_and_detects_the_same(float_file, images) -> None:
    litert = TflitePredictor(float_file)
    for image in images[:6]:
        [expected] = litert.predict([image])
        got = mediapipe_detections(float_file, image, LABELS)
        assert_mediapipe_agrees(expected, got, size=320, top=20)


def test_the_file_has_the_detection_signature_and_the_models_label_map(float_file) -> None:
    interpreter = Interpreter(model_content=float_file, num_threads=1)
    [image] = interpreter.get_input_details()
    assert image["name"] == "image"
    assert list(image["shape"]) == [1, 320, 320, 3] and image["dtype"] == np.float32
    outputs = interpreter.get_signature_runner().get_output_details()
    assert sorted(outputs) == sorted(OUTPUT_KEYS)
    assert list(outputs["detection_boxes"]["shape"]) == [1, 100, 4]
    # Exactly the labels, plain text, no "background" entry.
    with zipfile.ZipFile(io.BytesIO(float_file)) as archive:
        assert archive.read(LABEL_FILE) == b"red\ngreen\nblue\n"
    assert read_labels(float_file) == LABELS


def test_export_is_deterministic(model_file, float_file, int8_file, images) -> None:
    assert export_tflite(model_file).data == float_file
    assert export_tflite_int8(model_file, images).data == int8_file


def test_the_int8_file_takes_uint8_pixels_and_mediapipe_runs_it(
    model_file, int8_file, float_file, images
) -> None:
    interpreter = Interpreter(model_content=int8_file, num_threads=1)
    [image] = interpreter.get_input_details()
    assert image["dtype"] == np.uint8 and list(image["shape"]) == [1, 320, 320, 3]
    # The uint8 value is the pixel: scale 1/128 and zero point 127 give (pixel - 127) / 128.
    assert image["quantization"] == (pytest.approx(1 / 128), 127)
    assert len(int8_file) < len(float_file) / 3
    assert read_labels(int8_file) == LABELS
    quantized = TflitePredictor(int8_file)
    for image_tensor in images[:4]:
        [ours] = quantized.predict([image_tensor])
        got = mediapipe_detections(int8_file, image_tensor, LABELS)
        assert_mediapipe_agrees(ours, got, size=320, top=10)


def test_evaluating_the_exported_files_scores_like_pytorch(model_file, float_file, shapes):
    samples = shapes.samples[:8]
    as_weights = evaluate(model_file, samples, shapes.read, artifact_format="pytorch")
    as_tflite = evaluate(float_file, samples, shapes.read, artifact_format="tflite")
    for figure in ("AP", "AP50"):
        assert as_tflite.coco[figure] == pytest.approx(as_weights.coco[figure], abs=1e-4)


def test_refusals(model_file) -> None:
    with pytest.raises(ValueError, match="calibration images"):
        export_tflite_int8(model_file, [])
    with pytest.raises(ValueError, match=r"must be \(3, 320, 320\)"):
        export_tflite_int8(model_file, [torch.zeros((3, 64, 64), dtype=torch.uint8)])
    with pytest.raises(ValueError, match="not a TFLite file"):
        TflitePredictor(b"not a model")

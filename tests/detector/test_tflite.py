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
from tests.detector.test_export import LABELS, assert_same_detections
from tests.support.mediapipe import assert_mediapipe_agrees, mediapipe_detections


def test_litert_detects_what_pytorch_detects(
    tflite_model_file, float_tflite, tflite_images
) -> None:
    network = build_model(load_bundle(tflite_model_file))
    expected = predict_images(network, tflite_images, batch_size=1)
    got = TflitePredictor(float_tflite).predict(tflite_images)
    assert sum(len(d.scores) for d in expected) > 0
    for want, have in zip(expected, got, strict=True):
        assert_same_detections(want, have)


def test_mediapipe_loads_the_float_file_and_detects_the_same(float_tflite, tflite_images) -> None:
    litert = TflitePredictor(float_tflite)
    for image in tflite_images[:6]:
        [expected] = litert.predict([image])
        got = mediapipe_detections(float_tflite, image, LABELS)
        assert_mediapipe_agrees(expected, got, size=320, top=20)


def test_the_file_has_the_detection_signature_and_the_models_label_map(float_tflite) -> None:
    interpreter = Interpreter(model_content=float_tflite, num_threads=1)
    [image] = interpreter.get_input_details()
    assert image["name"] == "image"
    assert list(image["shape"]) == [1, 320, 320, 3] and image["dtype"] == np.float32
    outputs = interpreter.get_signature_runner().get_output_details()
    assert sorted(outputs) == sorted(OUTPUT_KEYS)
    assert list(outputs["detection_boxes"]["shape"]) == [1, 100, 4]
    # Exactly the labels, plain text, no "background" entry.
    with zipfile.ZipFile(io.BytesIO(float_tflite)) as archive:
        assert archive.read(LABEL_FILE) == b"red\ngreen\nblue\n"
    assert read_labels(float_tflite) == LABELS


def test_export_is_deterministic(
    tflite_model_file, float_tflite, int8_tflite, tflite_images
) -> None:
    assert export_tflite(tflite_model_file).data == float_tflite
    assert export_tflite_int8(tflite_model_file, tflite_images).data == int8_tflite


def test_the_int8_file_takes_uint8_pixels_and_mediapipe_runs_it(
    tflite_model_file, int8_tflite, float_tflite, tflite_images
) -> None:
    interpreter = Interpreter(model_content=int8_tflite, num_threads=1)
    [image] = interpreter.get_input_details()
    assert image["dtype"] == np.uint8 and list(image["shape"]) == [1, 320, 320, 3]
    # The uint8 value is the pixel: scale 1/128 and zero point 127 give (pixel - 127) / 128.
    assert image["quantization"] == (pytest.approx(1 / 128), 127)
    assert len(int8_tflite) < len(float_tflite) / 3
    assert read_labels(int8_tflite) == LABELS
    quantized = TflitePredictor(int8_tflite)
    for image_tensor in tflite_images[:4]:
        [ours] = quantized.predict([image_tensor])
        got = mediapipe_detections(int8_tflite, image_tensor, LABELS)
        assert_mediapipe_agrees(ours, got, size=320, top=10)


def test_evaluating_the_exported_files_scores_like_pytorch(tflite_model_file, float_tflite, shapes):
    samples = shapes.samples[:8]
    as_weights = evaluate(tflite_model_file, samples, shapes.read, artifact_format="pytorch")
    as_tflite = evaluate(float_tflite, samples, shapes.read, artifact_format="tflite")
    for figure in ("AP", "AP50"):
        assert as_tflite.coco[figure] == pytest.approx(as_weights.coco[figure], abs=1e-4)


def test_refusals(tflite_model_file) -> None:
    with pytest.raises(ValueError, match="calibration images"):
        export_tflite_int8(tflite_model_file, [])
    with pytest.raises(ValueError, match=r"must be \(3, 320, 320\)"):
        export_tflite_int8(tflite_model_file, [torch.zeros((3, 64, 64), dtype=torch.uint8)])
    with pytest.raises(ValueError, match="not a TFLite file"):
        TflitePredictor(b"not a model")

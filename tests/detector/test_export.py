"""The ONNX export: same detections as PyTorch, self-describing, deterministic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from app.detector.bundle import ModelBundle, load_bundle
from app.detector.data import ImageCache, plain_example
from app.detector.evaluate import evaluate
from app.detector.export import ONNX_OPSET, OnnxPredictor, export_onnx
from app.detector.model import Detector
from app.detector.predict import MAX_DETECTIONS, build_model, predict_images
from app.detector.spec import spec_for
from app.detector.types import Detections

LABELS = ("red", "green", "blue")
TOP = 20


def spread_model_file(labels: tuple[str, ...] = LABELS, seed: int = 0) -> bytes:
    """A model file whose detections have well-spread scores: the ImageNet backbone with
    output layers drawn wide (an untrained head scores every anchor near its 0.01 prior, and
    near-ties would make any two runtimes' orders differ)."""
    torch.manual_seed(seed)
    spec = spec_for("MOBILE_TF_LOW_LATENCY_1")
    model = Detector(spec, len(labels), pretrained=True).eval()
    for name, parameter in model.named_parameters():
        if "cls_out" in name or "box_out" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    return ModelBundle(spec.model_type, labels, spec.input_size, model.state_dict()).to_bytes()


@pytest.fixture(scope="module")
def model_file() -> bytes:
    return spread_model_file()


@pytest.fixture(scope="module")
def onnx_file(model_file: bytes) -> bytes:
    return export_onnx(model_file).data


def assert_same_detections(expected: Detections, got: Detections, top: int = TOP) -> None:
    """The top detections agree: scores within 1e-5, boxes within 1e-3 of the box's size,
    labels equal; detections whose scores tie within 1e-5 may come in either order."""
    assert len(got.scores) == len(expected.scores)
    np.testing.assert_allclose(got.scores[:top], expected.scores[:top], atol=1e-5)
    for i in range(min(top, len(expected.scores))):
        candidates = np.flatnonzero(np.abs(got.scores - expected.scores[i]) <= 1e-5)
        box = expected.boxes[i]
        size = max(float(box[2] - box[0]), float(box[3] - box[1]), 1e-6)
        close = [
            j
            for j in candidates
            if got.labels[j] == expected.labels[i]
            and np.abs(got.boxes[j] - box).max() <= 1e-3 * size
        ]
        assert close, f"detection {i} of PyTorch has no ONNX counterpart"


def test_onnx_detects_what_pytorch_detects(model_file, onnx_file, shapes) -> None:
    network = build_model(load_bundle(model_file))
    cache = ImageCache(shapes.samples, shapes.read, 320)
    images = [plain_example(cache[s.key], s, 320).image for s in shapes.samples[:12]]
    expected = predict_images(network, images, batch_size=1)
    got = OnnxPredictor(onnx_file, threads=2).predict(images)
    assert sum(len(d.scores) for d in expected) > 0
    for want, have in zip(expected, got, strict=True):
        assert_same_detections(want, have)


def test_the_graph_caps_nms_and_answers_an_image_with_nothing_to_detect(model_file) -> None:
    described = onnx.load_from_string(export_onnx(model_file).data)
    nms = [n for n in described.graph.node if n.op_type == "NonMaxSuppression"]
    assert len(nms) == 1 and not [n for n in described.graph.node if n.op_type == "If"]
    constants = {
        output: onnx.numpy_helper.to_array(n.attribute[0].t)
        for n in described.graph.node
        if n.op_type == "Constant"
        for output in n.output
    }
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in described.graph.initializer}
    max_kept = {**constants, **initializers}[nms[0].input[2]]
    assert max_kept.tolist() == [MAX_DETECTIONS]  # onnxruntime stops once it has kept these

    bundle = load_bundle(model_file)
    silent = {**bundle.state_dict}
    for name in [k for k in silent if "cls_out.bias" in k]:
        silent[name] = torch.full_like(silent[name], -30.0)  # every score far below 0.01
    size = bundle.input_size
    quiet_file = ModelBundle(bundle.model_type, bundle.labels, size, silent).to_bytes()
    image = torch.full((3, size, size), 127, dtype=torch.uint8)
    (expected,) = predict_images(build_model(load_bundle(quiet_file)), [image])
    (got,) = OnnxPredictor(export_onnx(quiet_file).data).predict([image])
    assert len(expected.scores) == len(got.scores) == 0
    assert got.boxes.shape == (0, 4)


def test_the_file_describes_itself_and_exports_deterministically(model_file, onnx_file) -> None:
    assert export_onnx(model_file).data == onnx_file
    described = onnx.load_from_string(onnx_file)
    assert described.opset_import[0].version == ONNX_OPSET
    props = {p.key: p.value for p in described.metadata_props}
    assert props["edge_automl.labels"] == '["red", "green", "blue"]'
    assert props["edge_automl.input_size"] == "320"
    predictor = OnnxPredictor(onnx_file)
    assert (predictor.labels, predictor.input_size) == (LABELS, 320)
    assert [i.name for i in predictor.session.get_inputs()] == ["image"]
    assert [o.name for o in predictor.session.get_outputs()] == ["boxes", "scores", "labels"]


def test_an_onnx_file_is_evaluated_like_its_weights(model_file, onnx_file, shapes) -> None:
    samples = shapes.samples[:8]
    from_weights = evaluate(model_file, samples, shapes.read)
    from_onnx = evaluate(onnx_file, samples, shapes.read, artifact_format="onnx")
    assert from_onnx.detection_count == from_weights.detection_count
    for name in ("AP", "AP50", "AP75"):
        assert from_onnx.coco[name] == pytest.approx(from_weights.coco[name], abs=1e-3)


def test_files_that_are_not_models_are_refused() -> None:
    with pytest.raises(ValueError, match="not an edge-automl model file"):
        export_onnx(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX file"):
        OnnxPredictor(b"not onnx")
    helper, tensor = onnx.helper, onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", tensor, [1])],
        [helper.make_tensor_value_info("y", tensor, [1])],
    )
    bare = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    with pytest.raises(ValueError, match="no label metadata"):
        OnnxPredictor(bare.SerializeToString())

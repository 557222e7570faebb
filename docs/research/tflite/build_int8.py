"""Full-integer model with uint8 input, without TensorFlow.

1. PT2E static int8 quantization (litert_torch's PT2EQuantizer + torchao prepare/convert), calibrated
   on generated images plus a black and a white frame; litert_torch converts to TFLite: int8 input,
   float outputs (encodings, scores).
2. ``uint8_input``: a new uint8 input tensor (scale 1/128, zero point 127, so the uint8 value IS the
   pixel and represents (pixel - 127) / 128 exactly) feeding a QUANTIZE op (uint8 -> int8,
   requantizing to whatever the calibration chose) in front of the old int8 input — what TF's
   converter does for inference_input_type=uint8.
3. TFLite_Detection_PostProcess appended (float inputs) and metadata written, as for float.

usage: build_int8.py [--reuse-raw] [--calibration N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from ai_edge_litert import schema_py_generated as schema

from common import calibration_images, make_model
from export_tflite import (
    MEAN,
    STD,
    DetectorForExport,
    _read_model,
    _write_model,
    append_postprocess,
    op_anchors,
    postprocess_options,
)
from metadata import add_detector_metadata

OUT = Path(os.environ.get("LAB_OUT", "out"))


def quantize_pt2e(model, images: list[np.ndarray], *, clip_boxes: bool = True) -> bytes:
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    def norm(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((image.astype(np.float32) - MEAN) / STD)[None])

    wrapped = DetectorForExport(model, clip_boxes=clip_boxes).eval()
    sample = (norm(images[0]),)
    graph = torch.export.export(wrapped, sample).module()
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for image in images:
            graph(norm(image))
    graph = convert_pt2e(graph, fold_quantize=False)
    edge = litert_torch.convert(graph, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return edge.model_content()


def uint8_input(tflite: bytes, *, scale: float = 1.0 / STD, zero_point: int = int(MEAN)) -> bytes:
    """Put QUANTIZE (uint8 -> int8) in front of an int8-input model; the new input is uint8."""
    model = _read_model(tflite)
    sg = model.subgraphs[0]
    assert len(sg.inputs) == 1
    old_index = sg.inputs[0]
    old = sg.tensors[old_index]
    if old.type != schema.TensorType.INT8:
        raise ValueError(f"expected an int8 input, found tensor type {old.type}")
    new = schema.TensorT()
    new.name = b"image"
    new.shape = list(old.shape)
    new.shapeSignature = list(old.shapeSignature) if old.shapeSignature is not None else None
    new.type = schema.TensorType.UINT8
    new.buffer = 0
    new.quantization = schema.QuantizationParametersT()
    new.quantization.scale = [float(scale)]
    new.quantization.zeroPoint = [int(zero_point)]
    sg.tensors.append(new)
    new_index = len(sg.tensors) - 1

    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.QUANTIZE
    code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
    code.version = 2
    model.operatorCodes.append(code)
    op = schema.OperatorT()
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.inputs = [new_index]
    op.outputs = [old_index]
    op.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
    op.builtinOptions = schema.QuantizeOptionsT()
    sg.operators.insert(0, op)
    sg.inputs = [new_index]
    for sig in model.signatureDefs or []:
        for tm in sig.inputs:
            if tm.tensorIndex == old_index:
                tm.tensorIndex = new_index
    return _write_model(model)


def finish(raw: bytes, model, labels, *, regular: bool = True, metadata: bool = True) -> bytes:
    options = postprocess_options(
        len(labels),
        max_detections=100,
        score_threshold=0.01,
        iou_threshold=0.6,
        use_regular_nms=regular,
    )
    data = append_postprocess(raw, op_anchors(model), options, 100)
    if metadata:
        data = add_detector_metadata(data, labels, mean=MEAN, std=STD)
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse-raw", action="store_true")
    parser.add_argument("--calibration", type=int, default=30)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    model, labels = make_model()
    timings = {}
    raw_path = OUT / "int8_pt2e_raw.tflite"
    if args.reuse_raw and raw_path.exists():
        raw = raw_path.read_bytes()
    else:
        start = time.perf_counter()
        raw = quantize_pt2e(model, calibration_images(args.calibration))
        timings["quantize_and_convert_s"] = round(time.perf_counter() - start, 1)
        raw_path.write_bytes(raw)
    # int8-input variant (what the quantizer gives): for the MediaPipe rejection check.
    (OUT / "model_int8_int8input.tflite").write_bytes(finish(raw, model, labels))
    start = time.perf_counter()
    data = finish(uint8_input(raw), model, labels)
    timings["uint8_edit_postprocess_metadata_s"] = round(time.perf_counter() - start, 2)
    (OUT / "model_int8_uint8.tflite").write_bytes(data)
    (OUT / "model_int8_uint8_fast.tflite").write_bytes(
        finish(uint8_input(raw), model, labels, regular=False)
    )
    print(json.dumps(timings), len(data))


if __name__ == "__main__":
    main()

"""LiteRT interpreter vs PyTorch (app.detector.predict.postprocess) on 5 generated images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from ai_edge_litert.interpreter import Interpreter

from common import make_model, test_images, torch_detections
from export_tflite import MEAN, STD, DetectorForExport

TOL = 1e-3
# ai-edge-litert 2.3.0 drops a class in regular NMS when num_threads == 2 (see FINDINGS.md).
THREADS = int(os.environ.get("LITERT_THREADS", "1"))


def run(interpreter: Interpreter, x: np.ndarray) -> list[np.ndarray]:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def compare(ref, boxes, classes, scores, count, *, clip: bool) -> dict:
    n = int(count[0])
    yxyx = boxes[0, :n]
    xyxy = yxyx[:, [1, 0, 3, 2]]
    if clip:
        xyxy = np.clip(xyxy, 0.0, 1.0)
    labels = classes[0, :n].astype(np.int64)
    sc = scores[0, :n]
    # Longest prefix where label and box agree (same detections, same order).
    prefix = 0
    for i in range(min(n, len(ref.scores))):
        if labels[i] != ref.labels[i] or np.abs(xyxy[i] - ref.boxes[i]).max() > TOL:
            break
        prefix += 1
    # Set match: each PyTorch detection has a LiteRT one with the same label and box.
    matched = 0
    for box, label in zip(ref.boxes, ref.labels, strict=True):
        same = (labels == label) & (np.abs(xyxy - box).max(axis=1) <= TOL)
        matched += bool(same.any())
    k = prefix
    box_diff = float(np.abs(xyxy[:k] - ref.boxes[:k]).max()) if k else float("nan")
    score_rel = (
        float((np.abs(sc[:k] - ref.scores[:k]) / np.abs(ref.scores[:k])).max()) if k else float("nan")
    )
    return {
        "n_tflite": n,
        "n_torch": len(ref.scores),
        "same_order_prefix": prefix,
        "matched": matched,
        "max_box_abs_diff_prefix": box_diff,
        "max_score_rel_diff_prefix": score_rel,
    }


def raw_parity(model, images, path: str) -> None:
    interpreter = Interpreter(model_path=path, num_threads=THREADS)
    interpreter.allocate_tensors()
    wrapped = DetectorForExport(model).eval()
    worst = [0.0, 0.0]
    for image in images:
        x = ((image.astype(np.float32) - MEAN) / STD)[None]
        outs = run(interpreter, x)
        enc = next(o for o in outs if o.shape[-1] == 4)
        sco = next(o for o in outs if o.shape[-1] != 4)
        with torch.no_grad():
            ref_enc, ref_sco = wrapped(torch.from_numpy(x))
        worst[0] = max(worst[0], float(np.abs(enc - ref_enc.numpy()).max()))
        worst[1] = max(worst[1], float(np.abs(sco - ref_sco.numpy()).max()))
    print(f"raw head (no op): max |encodings diff| {worst[0]:.2e}, max |scores diff| {worst[1]:.2e}")


def main(paths: list[str]) -> None:
    model, _ = make_model()
    images = test_images(5)
    raw = Path(paths[0]).parent / "raw_head.tflite"
    if raw.exists():
        raw_parity(model, images, str(raw))
    for score_threshold in (0.01, 0.3):
        refs = [torch_detections(model, im, score_threshold=score_threshold) for im in images]
        for path in paths:
            if score_threshold != 0.01 and "fast" in path:
                continue
            interpreter = Interpreter(model_path=path, num_threads=THREADS)
            interpreter.allocate_tensors()
            fold = "fold" in path
            clip = "clip" not in path
            print(f"== {path} (op score threshold 0.01; PyTorch threshold {score_threshold}; LiteRT threads {THREADS})")
            for i, (image, ref) in enumerate(zip(images, refs, strict=True)):
                x = image.astype(np.float32)[None]
                if not fold:
                    x = (x - MEAN) / STD
                boxes, classes, scores, count = run(interpreter, x)
                if score_threshold != 0.01:  # filter op output to the same threshold
                    keep = scores[0] > score_threshold
                    c = int(keep[: int(count[0])].sum())
                    boxes, classes, scores = (
                        boxes[:, keep[: boxes.shape[1]]],
                        classes[:, keep],
                        scores[:, keep],
                    )
                    count = np.array([c], np.float32)
                result = compare(ref, boxes, classes, scores, count, clip=clip)
                print(f"  image {i}: {result}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""MediaPipe Tasks ObjectDetector (pip mediapipe) on the exported files vs the LiteRT interpreter
and the PyTorch reference, on the same 5 generated images.

usage: verify_mediapipe.py MODEL.tflite [--uint8] [--top K]
"""

from __future__ import annotations

import argparse

import mediapipe as mp
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions

from common import SIZE, make_model, test_images, torch_detections
from export_tflite import MEAN, STD


def mediapipe_detections(path: str, image: np.ndarray, score_threshold: float, labels: list[str]):
    options = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=path),
        score_threshold=score_threshold,
        max_results=-1,
    )
    with vision.ObjectDetector.create_from_options(options) as detector:
        result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    out = []
    for det in result.detections:
        bb = det.bounding_box
        cat = det.categories[0]
        box = np.array(
            [bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height], np.float64
        )
        # MediaPipe 1.2.3 leaves Category.index None when a label map names the class.
        index = cat.index if cat.index is not None else labels.index(cat.category_name)
        out.append((cat.category_name, index, float(cat.score), box))
    return out


def litert_detections(path: str, image: np.ndarray, uint8: bool, fold: bool):
    it = Interpreter(model_path=path, num_threads=1)  # 2 threads: LiteRT 2.3 regular-NMS bug
    it.allocate_tensors()
    if uint8:
        x = image[None]
    else:
        x = image.astype(np.float32)[None]
        if not fold:
            x = (x - MEAN) / STD
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    boxes, classes, scores, count = (it.get_tensor(d["index"]) for d in it.get_output_details())
    n = int(count[0])
    return boxes[0, :n][:, [1, 0, 3, 2]], classes[0, :n].astype(int), scores[0, :n]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--uint8", action="store_true")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--score-threshold", type=float, default=0.3)
    args = parser.parse_args()
    model, labels = make_model()
    fold = "fold" in args.model
    print(f"== {args.model} (MediaPipe {mp.__version__}, score_threshold {args.score_threshold})")
    for i, image in enumerate(test_images(5)):
        dets = mediapipe_detections(args.model, image, args.score_threshold, labels)
        ref = torch_detections(model, image, score_threshold=args.score_threshold)
        lb, lc, ls = litert_detections(args.model, image, args.uint8, fold)
        keep = ls > args.score_threshold
        lb, lc, ls = lb[keep], lc[keep], ls[keep]
        # MediaPipe keeps one category per box: regular NMS can return the same anchor box for
        # two classes; MediaPipe reports only the first (highest score). Collapse likewise.
        first = [j for j in range(len(ls)) if not any(np.array_equal(lb[j], lb[q]) for q in range(j))]
        eb, ec, es = lb[first], lc[first], ls[first]
        n = min(len(dets), len(es))
        mp_px = np.array([d[3] for d in dets[:n]])
        # MediaPipe truncates: origin = int(xmin * W), size = int((xmax - xmin) * W).
        x1, y1 = np.floor(eb[:n, 0] * SIZE), np.floor(eb[:n, 1] * SIZE)
        exp_px = np.stack(
            [x1, y1, x1 + np.floor((eb[:n, 2] - eb[:n, 0]) * SIZE), y1 + np.floor((eb[:n, 3] - eb[:n, 1]) * SIZE)],
            axis=1,
        )
        px_diff = float(np.abs(mp_px - exp_px).max()) if n else 0.0
        labels_equal = [d[1] for d in dets[:n]] == ec[:n].tolist()
        score_diff = float(np.abs(np.array([d[2] for d in dets[:n]]) - es[:n]).max()) if n else 0.0
        # PyTorch detections with MediaPipe's one-category-per-box collapse applied.
        tfirst = [j for j in range(len(ref.scores)) if not any(np.abs(ref.boxes[j] - ref.boxes[q]).max() < 1e-6 for q in range(j))]
        tl, tb = ref.labels[tfirst], ref.boxes[tfirst]
        k = min(args.top, len(dets), len(tl))
        top_torch = [d[1] for d in dets[:k]] == tl[:k].tolist()
        top_box = float(np.abs(np.array([d[3] for d in dets[:k]]) / SIZE - tb[:k]).max()) if k else 0.0
        print(
            f"  image {i}: mediapipe {len(dets)} dets, litert {len(ls)} ({len(es)} distinct boxes), "
            f"torch {len(ref.scores)} | vs litert: labels/order equal {labels_equal}, max px diff "
            f"{px_diff:.0f}, max score diff {score_diff:.1e} | top-{k} vs torch: labels equal "
            f"{top_torch}, max box diff {top_box:.1e} (normalized, px truncation included)"
        )
        if i == 0:
            for d in dets[:3]:
                print(f"    e.g. {d[0]} score {d[2]:.4f} box px {d[3]}")


if __name__ == "__main__":
    main()

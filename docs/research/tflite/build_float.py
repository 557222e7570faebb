"""Build the float variants into out/ (reusing conversions) and record conversion timings."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common import make_model
from export_tflite import (
    DetectorForExport,
    MEAN,
    STD,
    append_postprocess,
    convert,
    op_anchors,
    postprocess_options,
)
from metadata import add_detector_metadata

OUT = Path(os.environ.get("LAB_OUT", "out"))


def main() -> None:
    OUT.mkdir(exist_ok=True)
    model, labels = make_model()
    size = model.spec.input_size
    anchors = op_anchors(model)
    timings = {}
    for variant, kwargs in {
        "plain": {},
        "clip": {"clip_boxes": True},
        "fold": {"fold_normalization": True},
    }.items():
        start = time.perf_counter()
        raw = convert(DetectorForExport(model, **kwargs), size)
        timings[f"convert_{variant}_s"] = round(time.perf_counter() - start, 2)
        if variant == "plain":
            (OUT / "raw_head.tflite").write_bytes(raw)
        mean, std = (0.0, 1.0) if variant == "fold" else (MEAN, STD)
        for nms in ("regular", "fast"):
            if variant != "plain" and nms == "fast":
                continue
            start = time.perf_counter()
            options = postprocess_options(
                len(labels),
                max_detections=100,
                score_threshold=0.01,
                iou_threshold=0.6,
                use_regular_nms=nms == "regular",
            )
            data = append_postprocess(raw, anchors, options, 100)
            data = add_detector_metadata(data, labels, mean=mean, std=std, name="ObjectDetector")
            timings[f"postprocess_and_metadata_{variant}_{nms}_s"] = round(
                time.perf_counter() - start, 2
            )
            suffix = "" if variant == "plain" else f"_{variant}"
            path = OUT / f"model_float_{nms}{suffix}.tflite"
            path.write_bytes(data)
            print(path, len(data))
    print(json.dumps(timings, indent=1))
    (OUT / "build_float_timings.json").write_text(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()

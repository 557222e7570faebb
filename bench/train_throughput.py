"""Training throughput per model type and precision, and the share of step time spent
waiting for data, on a dataset folder (the CSV layout of DESIGN.md §3.1).

    .venv/bin/python bench/train_throughput.py --dataset ../shared/datasets/raccoon

Each configuration trains for ``--seconds`` of wall clock through the trainer itself (the
same loop as a training job, minus the database) and prints one JSON line: model type,
precision (bf16 autocast or fp32), loader processes, memory format, images/s over the run's
steps, seconds per step and the data-wait share. A model type's first line is its baseline
(fp32, loader in the main process, contiguous tensors); every line carries its speed-up
against that baseline, measured in the same run.
"""

# ruff: noqa: E402 - the sys.path fix below must run before anything imports ``queue``.

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import csv
import json
from collections import defaultdict

import numpy as np

from app.detector import trainer
from app.detector.spec import ModelType
from app.detector.types import Sample, TrainConfig


def load_folder(folder: Path) -> tuple[list[str], list[Sample]]:
    """The TRAIN rows of a dataset folder's labels.csv as samples keyed by relative path."""
    boxes: dict[str, list[tuple[str, list[float]]]] = defaultdict(list)
    for row in csv.reader((folder / "labels.csv").open()):
        if row[0] == "TRAIN" and len(row) > 8 and row[2]:
            coords = [float(row[3]), float(row[4]), float(row[7]), float(row[8])]
            boxes[row[1]].append((row[2], coords))
    labels = sorted({label for rows in boxes.values() for label, _ in rows})
    samples = [
        Sample(
            key,
            np.array([c for _, c in rows], np.float32),
            np.array([labels.index(label) for label, _ in rows], np.int64),
        )
        for key, rows in sorted(boxes.items())
    ]
    return labels, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--only-low-latency", action="store_true")
    args = parser.parse_args()
    folder = args.dataset.resolve()
    labels, samples = load_folder(folder)

    def read(key: str) -> bytes:
        return (folder / key).read_bytes()

    low = ModelType.MOBILE_TF_LOW_LATENCY_1
    # (model type, bf16 autocast, loader processes, channels-last)
    runs = [(low, False, 0, False), (low, True, 0, False), (low, True, 1, False)]
    runs += [(low, True, 0, True)]
    runs += [(t, bf16, 0, False) for t in list(ModelType)[1:] for bf16 in (False, True)]
    if args.only_low_latency:
        runs = [run for run in runs if run[0] is low]
    baseline: dict[ModelType, float] = {}
    for model_type, bf16, workers, channels_last in runs:
        config = TrainConfig(
            model_type=model_type,
            labels=tuple(labels),
            budget_seconds=args.seconds,
            bf16=bf16,
            loader_workers=workers,
            device="cpu",
            channels_last=channels_last,
        )
        result = trainer.train(config, samples, [], read)
        speed = result.images_per_second
        if not bf16 and workers == 0 and not channels_last:
            baseline[model_type] = speed
        line = {
            "model_type": str(model_type),
            "precision": "bf16" if bf16 else "fp32",
            "loader_processes": workers,
            "channels_last": channels_last,
            "images_per_s": round(speed, 2),
            "seconds_per_step": round(16 / speed, 3),
            "steps": result.steps,
            "data_wait_share": round(result.data_wait_share, 4),
            "speedup_vs_fp32": round(speed / baseline[model_type], 2),
            "cpu_bf16_native": trainer.bf16_supported(),
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

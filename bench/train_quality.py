"""Benchmark of training quality within a budget, through the service's own code path.

    .venv/bin/python bench/train_quality.py --dataset ../shared/datasets/raccoon \\
        --model-type MOBILE_TF_LOW_LATENCY_1 --budget-minutes 15

A scratch SQLite database and local blob store are made in a temporary folder; the dataset
folder (the CSV layout of DESIGN.md §3.1, ``labels.csv`` beside ``images/``) is imported by an
import job, a training job is created with the budget, and an in-process worker runs both as
the service's workers do. The model's TEST evaluation (the one the service stores) is then
read back. Prints one JSON line: ``test_map50``, ``test_map50_95``, ``epochs``,
``images_per_s``, ``stop_reason``, ``params``, ``gflops`` and ``per_label`` (COCO figures by
label), plus the budget spent, the share of step time spent waiting for data and timings.
With ``--exports tflite,tflite-int8`` (any of onnx, tflite, tflite-int8) the model is then
exported by the service's export jobs and each file is evaluated on TEST by an evaluation
job, as ``POST /v1/models/{id}/evaluations`` with ``artifactFormat`` does: ``exports`` gives
each file's mAP@0.5, AP@[.5:.95] and size, and ``ap50_points_vs_pytorch`` (100 x the
difference from the weights' figure). Exits 1 when a job did not succeed.
"""

# ruff: noqa: E402 - the sys.path fix below must run before anything imports ``queue``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path and bench/queue.py would shadow the
# standard library's ``queue``; the repository root goes there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import json
import math
import os
import tempfile
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from app.config import load_settings, open_settings_blob_store
from app.datasets import service as datasets_service
from app.datasets.schemas import DatasetCreate, ImportUris
from app.db import migrate
from app.db.job import JobState
from app.db.session import make_engine, make_session_factory
from app.detector.model import Detector
from app.detector.spec import spec_for
from app.evaluation import service as evaluation_service
from app.evaluation.schemas import EvaluationCreate
from app.jobs import service as jobs_service
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.registry import service as registry_service
from app.registry.schemas import ExportRequest
from app.training import service as training_service
from app.training.schemas import TrainingJobCreate


def model_size(model_type: str, num_labels: int) -> tuple[int, float]:
    """Parameters and GFLOPs (multiply-adds counted twice) of one forward pass."""
    spec = spec_for(model_type)
    model = Detector(spec, num_labels, pretrained=False).eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, spec.input_size, spec.input_size))
    return params, counter.get_total_flops() / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--model-type", default="MOBILE_TF_LOW_LATENCY_1")
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--disable-early-stopping", action="store_true")
    parser.add_argument(
        "--exports",
        default="",
        help="comma-separated formats to export and evaluate on TEST (onnx, tflite, tflite-int8)",
    )
    args = parser.parse_args()
    folder = args.dataset.resolve()
    budget = max(1, math.floor(args.budget_minutes * 1000 / 60))

    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        work = Path(scratch)
        settings = load_settings(
            database_url=f"sqlite:///{work / 'bench.db'}",
            blob_url=f"file://{work / 'blobs'}",
            import_root=str(folder.parent),
        )
        migrate.upgrade(settings.database_url)
        sessions = make_session_factory(make_engine(settings.database_url))
        blobs = open_settings_blob_store(settings)
        worker = Worker(settings=settings, session_factory=sessions, registry=default_registry())

        started = time.monotonic()
        with sessions.begin() as session:
            dataset = datasets_service.create(
                session, dataset_in=DatasetCreate(display_name=folder.name)
            )
            datasets_service.start_import_uris(
                session,
                dataset_id=dataset.id,
                request=ImportUris(uris=[str(folder / "labels.csv")]),
            )
        worker.run(stop_when_idle=True)
        imported = time.monotonic() - started

        with sessions.begin() as session:
            job = training_service.create(
                session,
                blobs,
                settings,
                job_in=TrainingJobCreate(
                    dataset_id=dataset.id,
                    display_name=f"bench {folder.name}",
                    model_type=args.model_type,
                    budget_milli_node_hours=budget,
                    disable_early_stopping=args.disable_early_stopping,
                    seed=args.seed,
                ),
            )
            training_job_id, queue_job_id = job.id, job.job_id
        started = time.monotonic()
        worker.run(stop_when_idle=True)
        job_seconds = time.monotonic() - started

        with sessions.begin() as session:
            queue_job = jobs_service.get(session, job_id=queue_job_id)
            state, response, error = queue_job.state, queue_job.result, queue_job.last_error
        if state != JobState.SUCCEEDED:
            print(json.dumps({"error": f"training job {training_job_id} ended {state}: {error}"}))
            return 1
        evaluation = response["evaluation"]
        document = json.loads(
            blobs.get(evaluation_service.metrics_key(response["modelId"], evaluation["id"]))
        )
        coco = document["cocoMetrics"]
        labels = list(coco["perLabel"])
        params, gflops = model_size(args.model_type, len(labels))
        result: dict[str, Any] = {
            "dataset": folder.name,
            "model_type": args.model_type,
            "budget_milli_node_hours": budget,
            "test_map50": round(coco["overall"]["AP50"], 4),
            "test_map50_95": round(coco["overall"]["AP"], 4),
            "epochs": response["epochs"],
            "steps": response["steps"],
            "images_per_s": round(response["imagesPerSecond"], 2),
            "data_wait_share": round(response["dataWaitShare"], 4),
            "stop_reason": response["successfulStopReason"],
            "cost_milli_node_hours": response["costMilliNodeHours"],
            "job_seconds": round(job_seconds, 1),
            "import_seconds": round(imported, 1),
            "params": params,
            "gflops": round(gflops, 3),
            "test_images": document["imageCount"],
            "per_label": {
                name: {"ap50": round(v["AP50"], 4), "ap50_95": round(v["AP"], 4)}
                for name, v in coco["perLabel"].items()
            },
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        }
        if args.exports:
            exports = shipped_figures(
                sessions,
                worker,
                blobs,
                model_id=response["modelId"],
                dataset_id=dataset.id,
                formats=[f.strip() for f in args.exports.split(",") if f.strip()],
            )
            if exports is None:
                return 1
            for figures in exports.values():
                figures["ap50_points_vs_pytorch"] = round(
                    100 * (figures["test_map50"] - coco["overall"]["AP50"]), 2
                )
            result["exports"] = exports
        print(json.dumps(result), flush=True)
    return 0


def shipped_figures(
    sessions: Any, worker: Worker, blobs: Any, *, model_id: str, dataset_id: str, formats: list[str]
) -> dict[str, dict[str, Any]] | None:
    """Export the model in each format and evaluate each file on TEST, through the jobs."""
    figures: dict[str, dict[str, Any]] = {}
    for artifact_format in formats:
        started = time.monotonic()
        with sessions.begin() as session:
            export_job = registry_service.request_export(
                session, model_id=model_id, export_in=ExportRequest(format=artifact_format)
            ).id
        worker.run(stop_when_idle=True)
        exported = time.monotonic() - started
        with sessions.begin() as session:
            evaluation_job = evaluation_service.create(
                session,
                model_id=model_id,
                evaluation_in=EvaluationCreate(
                    dataset_id=dataset_id, artifact_format=artifact_format
                ),
            ).id
        worker.run(stop_when_idle=True)
        with sessions.begin() as session:
            jobs = [jobs_service.get(session, job_id=i) for i in (export_job, evaluation_job)]
            outcome = [(j.state, j.result, j.last_error) for j in jobs]
        (export_state, export_result, export_error), (state, result, error) = outcome
        if export_state != JobState.SUCCEEDED or state != JobState.SUCCEEDED:
            print(json.dumps({"error": f"{artifact_format}: {export_error or error}"}))
            return None
        document = json.loads(
            blobs.get(evaluation_service.metrics_key(model_id, result["evaluationId"]))
        )
        overall = document["cocoMetrics"]["overall"]
        figures[artifact_format] = {
            "test_map50": round(overall["AP50"], 4),
            "test_map50_95": round(overall["AP"], 4),
            "mb": round(export_result["sizeBytes"] / 1e6, 2),
            "export_seconds": round(exported, 1),
        }
    return figures


if __name__ == "__main__":
    sys.exit(main())

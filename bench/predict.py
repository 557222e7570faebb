"""Benchmark of online prediction: ONNX latency, the predict path in-process and over HTTP.

    .venv/bin/python bench/predict.py [--model-types LL,VERSATILE,HIGH_ACCURACY] [--seconds 10]

Per model type, a model file is made (the ImageNet backbone with its output layers drawn wide,
so every image yields the full 100 detections and NMS does its most work; the weights' quality
does not change the time), exported to ONNX as the service exports it, and measured:

- ``onnx_p50_ms`` / ``onnx_p99_ms``: onnxruntime alone at batch 1 on a prepared input;
- ``tflite_*`` / ``tflite_int8_*``: the TFLite files (float32, and int8 calibrated on the
  bench photo's flips) in LiteRT at one thread, as the service runs them (two threads lose a
  class in the post-process op, see app/detector/tflite.py); ``*_2threads_p50_ms`` for
  reference, and each file's size;
- ``inprocess_*``: the whole predict path in one process (the service's ``predict``: read the
  deployment, decode and preprocess a 640x480 JPEG, infer, filter, shape the answer), one
  request at a time;
- ``http_c{N}_*``: a real ``edge-automl serve`` (SQLite, local blobs, no worker) with N
  concurrent clients posting Vertex JSON for ``--seconds``: requests/s, p50, p99.

Ratios against the in-process path are printed alongside (``http_c16_share`` is HTTP
throughput at 16 clients over the in-process requests/s; ``http_c{1,16}_p99_over_p50``), and
``machine_matmul_ms`` says how fast the machine was (see :func:`machine_matmul_ms`). Prints one
JSON line per model type.
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
import base64
import hashlib
import io
import json
import multiprocessing
import os
import socket
import subprocess
import tempfile
import time

import httpx
import numpy as np
import torch
from PIL import Image

from app.config import load_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory
from app.detector.bundle import ModelBundle
from app.detector.data import model_input
from app.detector.export import ONNX_INPUT, OnnxPredictor, export_onnx
from app.detector.model import Detector
from app.detector.spec import resolve_model_type, spec_for
from app.detector.tflite import TflitePredictor, export_tflite, export_tflite_int8
from app.inference import service as inference_service
from app.inference.schemas import PredictParameters
from app.kit.blobs import open_blob_store
from app.registry import service as registry_service

SHORT_NAMES = {
    "LL": "MOBILE_TF_LOW_LATENCY_1",
    "VERSATILE": "MOBILE_TF_VERSATILE_1",
    "HIGH_ACCURACY": "MOBILE_TF_HIGH_ACCURACY_1",
}
LABELS = ("a", "b", "c")


def model_file(model_type: str) -> bytes:
    torch.manual_seed(0)
    spec = spec_for(model_type)
    model = Detector(spec, len(LABELS), pretrained=True).eval()
    for name, parameter in model.named_parameters():
        if "cls_out" in name or "box_out" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    return ModelBundle(spec.model_type, LABELS, spec.input_size, model.state_dict()).to_bytes()


def photo() -> bytes:
    """A 640x480 JPEG with some structure (noise would defeat JPEG and inflate decode time)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def percentiles(values: list[float]) -> tuple[float, float]:
    array = np.array(values) * 1000
    return float(np.percentile(array, 50)), float(np.percentile(array, 99))


def timed(call, *, seconds: float, least: int = 20) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(times) < least:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def machine_matmul_ms() -> float:
    """The median time of a 1024x1024 float32 matrix product in NumPy: how fast this machine
    is right now. The same 2-core machine type has run anywhere from 9 to 15 ms, and every
    latency here moves with it, so runs are compared through this figure."""
    matrix = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    return round(float(np.median(timed(lambda: matrix @ matrix, seconds=1.0))) * 1000, 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client(url: str, body: dict, until: float) -> list[float]:
    """One client: posts ``body`` back to back until the wall-clock time ``until``."""
    latencies = []
    with httpx.Client(timeout=60) as http:
        while time.time() < until:
            started = time.perf_counter()
            response = http.post(url, json=body)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
    return latencies


def http_load(url: str, body: dict, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` client processes (threads of this process would share one interpreter
    lock with each other and measure it) for ``seconds``; requests/s, p50 and p99."""
    context = multiprocessing.get_context("fork")  # the clients use httpx only
    with context.Pool(clients) as pool:
        until = time.time() + 1.0 + seconds  # every client starts in the same second
        runs = [pool.apply_async(_client, (url, body, until)) for _ in range(clients)]
        latencies = [latency for run in runs for latency in run.get()]
    p50, p99 = percentiles(latencies)
    return {"rps": len(latencies) / seconds, "p50_ms": p50, "p99_ms": p99}


def litert_figures(data: bytes, size: int, seconds: float) -> dict[str, float]:
    """Sizes and LiteRT latencies of the model's TFLite files."""
    image = model_input(photo(), size)[0]
    calibration = [image, image.flip(2), image.flip(1), image.flip(1).flip(2)]
    figures: dict[str, float] = {}
    for name, exported in (
        ("tflite", export_tflite(data)),
        ("tflite_int8", export_tflite_int8(data, calibration)),
    ):
        figures[f"{name}_mb"] = round(len(exported.data) / 1e6, 2)
        for threads, suffix in ((1, ""), (2, "_2threads")):
            predictor = TflitePredictor(exported.data, threads=threads)
            predictor.predict([image])
            p50, p99 = percentiles(timed(lambda p=predictor: p.predict([image]), seconds=seconds))
            figures[f"{name}{suffix}_p50_ms"] = round(p50, 2)
            if not suffix:
                figures[f"{name}_p99_ms"] = round(p99, 2)
    return figures


def bench(model_type: str, seconds: float, threads: int) -> dict[str, object]:
    machine_ms = machine_matmul_ms()
    data = model_file(model_type)
    exported = export_onnx(data)
    size = spec_for(model_type).input_size
    predictor = OnnxPredictor(exported.data, threads=threads)
    prepared = {ONNX_INPUT: np.full((1, 3, size, size), 127.0, dtype=np.float32)}
    predictor.session.run(None, prepared)
    onnx_p50, onnx_p99 = percentiles(
        timed(lambda: predictor.session.run(None, prepared), seconds=seconds)
    )
    tflite_figures = litert_figures(data, size, seconds)

    scratch = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    database_url = f"sqlite:///{scratch / 'db.sqlite'}"
    blob_dir = scratch / "blobs"
    settings = load_settings(
        database_url=database_url, blob_url=f"file://{blob_dir}", inference_threads=threads
    )
    migrate.upgrade(database_url)
    blobs = open_blob_store(settings.blob_url)
    sessions = make_session_factory(make_engine(database_url))
    model_id = "bench"
    weights = registry_service.StoredFile(
        registry_service.weights_key(model_id, 1), hashlib.sha256(data).hexdigest(), len(data)
    )
    blobs.put(weights.key, data)
    onnx_file = registry_service.StoredFile(
        registry_service.artifact_key(model_id, 1, "onnx"),
        hashlib.sha256(exported.data).hexdigest(),
        len(exported.data),
    )
    blobs.put(onnx_file.key, exported.data)
    with sessions.begin() as session:
        _, version = registry_service.create_model(
            session,
            model_id=model_id,
            display_name="bench",
            labels=LABELS,
            model_type=model_type,
            input_size=size,
            training_job_id=None,
            weights=weights,
        )
        registry_service.add_artifact(
            session, version=version, format="onnx", stored=onnx_file, details=exported.details
        )
        inference_service.deploy(session, blobs, settings, model_id=model_id, version=None)

    image = photo()
    parameters = PredictParameters(max_predictions=100)

    def in_process() -> None:
        with sessions() as session:
            inference_service.predict(
                session,
                blobs,
                settings,
                model_id=model_id,
                images=[image],
                parameters=parameters,
            )

    inprocess = timed(in_process, seconds=seconds)
    in_p50, in_p99 = percentiles(inprocess)
    in_rps = len(inprocess) / sum(inprocess)

    port = free_port()
    environment = {
        **os.environ,
        "EDGE_AUTOML_DATABASE_URL": database_url,
        "EDGE_AUTOML_BLOB_URL": f"file://{blob_dir}",
        "EDGE_AUTOML_EMBEDDED_WORKER": "false",
        "EDGE_AUTOML_INFERENCE_THREADS": str(threads),
        "EDGE_AUTOML_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        cwd=_HERE.parent,
    )
    result: dict[str, object] = {
        "model_type": model_type,
        "machine_matmul_ms": machine_ms,
        "onnx_mb": round(len(exported.data) / 1e6, 2),
        "pytorch_mb": round(len(data) / 1e6, 2),
        "onnx_p50_ms": round(onnx_p50, 2),
        "onnx_p99_ms": round(onnx_p99, 2),
        "inprocess_p50_ms": round(in_p50, 2),
        "inprocess_p99_ms": round(in_p99, 2),
        "inprocess_rps": round(in_rps, 1),
        **tflite_figures,
    }
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {
            "instances": [{"content": base64.b64encode(image).decode()}],
            "parameters": {"maxPredictions": 100},
        }
        http_load(f"{url}/v1/models/{model_id}:predict", body, 1, 2.0)  # loads the session
        loads = {}
        for clients in (1, 4, 16):
            load = http_load(f"{url}/v1/models/{model_id}:predict", body, clients, seconds)
            loads[clients] = load
            result[f"http_c{clients}_rps"] = round(load["rps"], 1)
            result[f"http_c{clients}_p50_ms"] = round(load["p50_ms"], 2)
            result[f"http_c{clients}_p99_ms"] = round(load["p99_ms"], 2)
        result["http_c16_share"] = round(loads[16]["rps"] / in_rps, 2)
        for clients in (1, 16):
            result[f"http_c{clients}_p99_over_p50"] = round(
                loads[clients]["p99_ms"] / loads[clients]["p50_ms"], 2
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-types", default="LL,VERSATILE,HIGH_ACCURACY")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    for name in args.model_types.split(","):
        model_type = str(resolve_model_type(SHORT_NAMES.get(name.strip(), name.strip())))
        print(json.dumps(bench(model_type, args.seconds, args.threads)), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark of the mobile download: ``:download`` answers (200 and 304) and the signed link.

    .venv/bin/python bench/download.py [--seconds 10] [--file-mb 4]

Makes a scratch SQLite database and blob folder holding one published model (a random
``--file-mb`` TFLite file as version 1, split ``{"1": 100}``; the rows are written as
publishing leaves them), starts a real ``edge-automl serve`` on them (no worker), and drives
it over HTTP from client processes, each for ``--seconds``:

- ``c{N}_200_*``: ``GET /v1/models/bench:download`` with no ``If-None-Match``, N clients
  back to back: requests/s, p50, p99 (each answer signs a new link);
- ``c{N}_304_*``: the same with ``If-None-Match: <modelHash>``, as an app that is current;
- ``link_c{N}_*``: GET of a signed downloadUri (the whole file, streamed from the blob
  folder): requests/s, p50, p99 and MB/s.

N is 1 (the baseline) and 16. ``*_c16_over_c1`` is the 16-client throughput over the
1-client throughput of the same kind, in this run. Prints one JSON line.
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
import hashlib
import json
import multiprocessing
import os
import random
import socket
import subprocess
import tempfile
import time

import httpx
import numpy as np

from app.db import migrate
from app.db.model import Model
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.db.session import make_engine, make_session_factory
from app.kit.blobs import open_blob_store
from app.kit.clock import utcnow

MODEL_NAME = "bench"
MiB = 1024 * 1024


def percentiles(values: list[float]) -> tuple[float, float]:
    array = np.array(values) * 1000
    return float(np.percentile(array, 50)), float(np.percentile(array, 99))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def publish_model(database_url: str, blob_url: str, data: bytes) -> str:
    """One model, version 1 with its TFLite file, published alone; returns the file's hash."""
    migrate.upgrade(database_url)
    blobs = open_blob_store(blob_url)
    sha256 = hashlib.sha256(data).hexdigest()
    key = "models/bench/versions/1/model.tflite"
    blobs.put(key, data)
    now = utcnow()
    engine = make_engine(database_url)
    with make_session_factory(engine).begin() as session:
        session.add(
            Model(
                id="bench",
                display_name=MODEL_NAME,
                labels=["a"],
                model_type="MOBILE_TF_LOW_LATENCY_1",
                input_size=320,
                training_job_id=None,
                source="upload",
                published_split={"1": 100},
                published_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        session.flush()  # the version's foreign key needs the model's row first
        session.add(
            ModelVersion(
                id="bench-v1",
                model_id="bench",
                version=1,
                training_job_id=None,
                format="tflite",
                weights_blob_key=key,
                weights_sha256=sha256,
                weights_size_bytes=len(data),
                created_at=now,
            )
        )
        session.add(
            ModelArtifact(
                id="bench-v1-tflite",
                model_id="bench",
                model_version=1,
                format="tflite",
                blob_key=key,
                sha256=sha256,
                size_bytes=len(data),
                details={},
                created_at=now,
            )
        )
    engine.dispose()
    return sha256


def _client(url: str, headers: dict[str, str], expect: int, until: float) -> list[float]:
    """One client: GETs ``url`` back to back until the wall-clock time ``until``."""
    latencies = []
    with httpx.Client(timeout=60) as http:
        while time.time() < until:
            started = time.perf_counter()
            response = http.get(url, headers=headers)
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status_code != expect:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
    return latencies


def http_load(
    url: str, clients: int, seconds: float, *, headers: dict[str, str] | None = None, expect: int
) -> dict[str, float]:
    """``clients`` client processes (threads of this process would share one interpreter
    lock with each other and measure it) for ``seconds``; requests/s, p50 and p99."""
    context = multiprocessing.get_context("fork")  # the clients use httpx only
    with context.Pool(clients) as pool:
        until = time.time() + 1.0 + seconds  # every client starts in the same second
        runs = [
            pool.apply_async(_client, (url, headers or {}, expect, until)) for _ in range(clients)
        ]
        latencies = [latency for run in runs for latency in run.get()]
    p50, p99 = percentiles(latencies)
    return {"rps": len(latencies) / seconds, "p50_ms": p50, "p99_ms": p99}


def bench(seconds: float, file_mb: float) -> dict[str, object]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-download-"))
    database_url = f"sqlite:///{scratch / 'db.sqlite'}"
    blob_url = f"file://{scratch / 'blobs'}"
    data = random.Random(0).randbytes(int(file_mb * MiB))
    sha256 = publish_model(database_url, blob_url, data)

    port = free_port()
    environment = {
        **os.environ,
        "EDGE_AUTOML_DATABASE_URL": database_url,
        "EDGE_AUTOML_BLOB_URL": blob_url,
        "EDGE_AUTOML_EMBEDDED_WORKER": "false",
        "EDGE_AUTOML_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        cwd=_HERE.parent,
    )
    result: dict[str, object] = {"file_mb": round(len(data) / 1e6, 2)}
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        download = f"{url}/v1/models/{MODEL_NAME}:download"
        answer = httpx.get(download, timeout=10)
        answer.raise_for_status()
        if answer.json()["modelHash"] != sha256:
            raise RuntimeError(f"served {answer.json()['modelHash']}, published {sha256}")
        link = answer.json()["downloadUri"]
        if hashlib.sha256(httpx.get(link, timeout=60).content).hexdigest() != sha256:
            raise RuntimeError("the link did not serve the published bytes")

        http_load(download, 1, 2.0, expect=200)  # warm-up: first connections, caches
        kinds: list[tuple[str, str, dict[str, str], int]] = [
            ("200", download, {}, 200),
            ("304", download, {"If-None-Match": sha256}, 304),
            ("link", link, {}, 200),
        ]
        for kind, target, headers, expect in kinds:
            loads = {}
            for clients in (1, 16):
                load = http_load(target, clients, seconds, headers=headers, expect=expect)
                loads[clients] = load
                prefix = f"link_c{clients}" if kind == "link" else f"c{clients}_{kind}"
                result[f"{prefix}_rps"] = round(load["rps"], 1)
                result[f"{prefix}_p50_ms"] = round(load["p50_ms"], 2)
                result[f"{prefix}_p99_ms"] = round(load["p99_ms"], 2)
                if kind == "link":
                    result[f"{prefix}_mb_s"] = round(load["rps"] * len(data) / 1e6, 1)
            result[f"{kind}_c16_over_c1"] = round(loads[16]["rps"] / loads[1]["rps"], 2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--file-mb", type=float, default=4.0)
    args = parser.parse_args()
    print(json.dumps(bench(args.seconds, args.file_mb)), flush=True)


if __name__ == "__main__":
    main()

"""The worker's side of batch prediction: a killed worker's job resumes after its last
recorded chunk with every result once, and a cancel stops a running job between chunks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from app.batch_prediction import repository
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from tests.batch_prediction.conftest import create, file_input, jsonl, results, write_photos
from tests.datasets.test_api import blob_files
from tests.fixtures.server import REPO_ROOT
from tests.support.processes import stop_all


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def chunks_done(session_factory, batch_job_id: str) -> int:
    with session_factory() as session:
        row = repository.get(session, batch_job_id)
        assert row is not None
        return row.chunks_done


def worker_process(settings) -> subprocess.Popen[bytes]:
    """``edge-automl worker`` on the test database and blob store."""
    env = {
        **os.environ,
        "EDGE_AUTOML_DATABASE_URL": settings.database_url,
        "EDGE_AUTOML_BLOB_URL": settings.blob_url,
        "EDGE_AUTOML_IMPORT_ROOT": str(settings.import_root),
        "EDGE_AUTOML_WORKER_POLL_SECONDS": "0.05",
        "EDGE_AUTOML_JOB_HEARTBEAT_SECONDS": "0.2",
        "EDGE_AUTOML_LOG_FORMAT": "text",
        "EDGE_AUTOML_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "app", "worker"], cwd=REPO_ROOT, env=env)


def test_a_killed_workers_job_resumes_after_its_last_recorded_chunk(
    client, model_id, import_root, settings, session_factory
):
    photos = write_photos(import_root / "photos", range(30))
    (import_root / "list.jsonl").write_text(jsonl(photos))
    job = create(client, model=model_id, inputConfig=file_input(import_root / "list.jsonl"))
    chunk_count = 15  # 30 images, 2 per chunk

    victim = worker_process(settings)
    try:
        # Killed as soon as a chunk is recorded: in the middle of the job, and possibly in
        # the middle of writing the next chunk's file.
        wait_for(lambda: chunks_done(session_factory, job["id"]) >= 1, 120, "the first chunk")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        stop_all([victim], timeout=10)
    killed_at = chunks_done(session_factory, job["id"])
    assert 1 <= killed_at < chunk_count, "the first worker must not have finished"
    interrupted = client.get(f"/v1/batchPredictionJobs/{job['id']}").json()
    assert interrupted["state"] == "JOB_STATE_RUNNING" and interrupted["attempts"] == 1
    assert len(results(client, job["id"])) == 2 * killed_at, "partial results are readable"

    # Another worker reclaims the job once its lease has run out, and finishes it.
    time.sleep(settings.job_stall_timeout_seconds + 0.2)
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    assert worker.run(stop_when_idle=True) == 1
    done = client.get(f"/v1/batchPredictionJobs/{job['id']}").json()
    assert done["state"] == "JOB_STATE_SUCCEEDED", done["error"]
    assert done["attempts"] == 2
    assert done["completionStats"] == {
        "successfulCount": 30,
        "failedCount": 0,
        "incompleteCount": 0,
    }
    operation = client.get(f"/v1/{done['operationName']}").json()
    assert "stopped heartbeating" in operation["metadata"]["lastError"]["message"]
    assert operation["response"]["resumedAfterChunk"] == killed_at

    lines = results(client, job["id"])
    assert [line["instance"]["content"] for line in lines] == photos, "each image once, in order"
    assert all("prediction" in line for line in lines)
    prefix = f"batchPredictionJobs/{job['id']}/"
    assert [f for f in blob_files(settings) if f.startswith(prefix)] == [
        f"{prefix}instances.jsonl",
        *(f"{prefix}predictions_{n:05d}.jsonl" for n in range(1, chunk_count + 1)),
    ]


def test_cancel_stops_a_running_job_between_chunks_keeping_what_is_finished(
    client, model_id, import_root, settings, session_factory
):
    photos = write_photos(import_root / "photos", range(40))
    (import_root / "list.jsonl").write_text(jsonl(photos))
    job = create(client, model=model_id, inputConfig=file_input(import_root / "list.jsonl"))
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        wait_for(lambda: chunks_done(session_factory, job["id"]) >= 1, 60, "the first chunk")
        cancelling = client.post(f"/v1/batchPredictionJobs/{job['id']}:cancel")
        assert cancelling.status_code == 200, cancelling.text
        assert cancelling.json()["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    finally:
        thread.join(60)
    assert not thread.is_alive()
    ended = client.get(f"/v1/batchPredictionJobs/{job['id']}").json()
    assert ended["state"] == "JOB_STATE_CANCELLED"
    stats, files = ended["completionStats"], ended["outputInfo"]["predictionFileCount"]
    assert 1 <= files < 20
    assert stats == {
        "successfulCount": 2 * files,
        "failedCount": 0,
        "incompleteCount": 40 - 2 * files,
    }
    lines = results(client, job["id"])
    assert [line["instance"]["content"] for line in lines] == photos[: 2 * files]
    operation = client.get(f"/v1/{ended['operationName']}").json()
    assert operation["error"]["status"] == "CANCELLED"
    assert operation["metadata"]["progressDetails"]["chunksDone"] == files


def test_a_result_file_left_unrecorded_is_written_again_not_trusted(
    client, run_jobs, model_id, import_root
):
    photos = write_photos(import_root, range(4))
    (import_root / "list.jsonl").write_text(jsonl(photos))
    job = create(client, model=model_id, inputConfig=file_input(import_root / "list.jsonl"))
    # What a worker killed while writing the second chunk leaves behind.
    blobs = client.app.state.blobs
    blobs.put(f"batchPredictionJobs/{job['id']}/predictions_00002.jsonl", b'{"half": ')
    assert results(client, job["id"]) == [], "an unrecorded file is not a result"
    assert run_jobs() == 1
    lines = results(client, job["id"])
    assert [line["instance"]["content"] for line in lines] == photos
    assert all("prediction" in line for line in lines)

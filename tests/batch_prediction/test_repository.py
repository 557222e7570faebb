"""Recording a finished chunk: once, in order, and only under the job's lease."""

from __future__ import annotations

import time

from app.batch_prediction import repository
from app.jobs import repository as jobs_repository
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from tests.batch_prediction.conftest import create, file_input, jsonl, write_photos


def test_a_chunk_is_counted_once_and_never_by_a_worker_that_lost_the_job(
    client, model_id, import_root, settings, session_factory
):
    (import_root / "list.jsonl").write_text(jsonl(write_photos(import_root, range(6))))
    job = create(client, model=model_id, inputConfig=file_input(import_root / "list.jsonl"))
    with session_factory.begin() as session:
        row = repository.get(session, job["id"])
        assert row is not None
        job_id = row.job_id
        claimed = jobs_repository.claim(session, worker_id="dead", kinds=["prediction.batch"])
        assert claimed == job_id

    def record(number: int, worker_id: str = "dead") -> bool:
        with session_factory.begin() as session:
            return repository.record_chunk(
                session,
                batch_job_id=job["id"],
                number=number,
                successful=1,
                failed=1,
                job_id=job_id,
                worker_id=worker_id,
            )

    assert record(1)
    assert not record(1), "a chunk is counted once"
    assert not record(3), "chunks are counted in order"
    assert not record(2, worker_id="someone else"), "only the lease holder counts"
    time.sleep(settings.job_stall_timeout_seconds + 0.2)
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    assert worker.reclaim_stalled() == 1
    assert not record(2), "the reclaimed worker's late chunk is not counted"

    stats = client.get(f"/v1/batchPredictionJobs/{job['id']}").json()["completionStats"]
    assert stats == {"successfulCount": 1, "failedCount": 1, "incompleteCount": 4}

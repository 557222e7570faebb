"""Several worker processes on one PostgreSQL database: each job runs once; a killed worker's
job is reclaimed and finished by another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.job import Job, JobState
from app.jobs import service
from tests.support.processes import stop_all

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("multi-process concurrency needs PostgreSQL: set TEST_DATABASE_URL")
    return database_url


class WorkerPool:
    def __init__(self, database_url: str, record_file: Path) -> None:
        self.env = {
            **os.environ,
            "EDGE_AUTOML_DATABASE_URL": database_url,
            "EDGE_AUTOML_WORKER_POLL_SECONDS": "0.2",
            "EDGE_AUTOML_JOB_HEARTBEAT_SECONDS": "0.3",
            "EDGE_AUTOML_JOB_STALL_TIMEOUT_SECONDS": "2",
            "EDGE_AUTOML_JOB_RETRY_BACKOFF_SECONDS": "0",
            "EDGE_AUTOML_LOG_LEVEL": "WARNING",
            "TEST_RECORD_FILE": str(record_file),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.support.worker_main"], cwd=REPO_ROOT, env=self.env
                )
            )

    def stop(self) -> None:
        stop_all(self.processes, timeout=15)


@pytest.fixture
def pool(postgres_url: str, tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(postgres_url, tmp_path / "record.log")
    yield pool
    pool.stop()


def wait_until_done(session_factory: sessionmaker[Session], total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_factory() as session:
            done = session.scalar(select(func.count()).where(Job.state == JobState.SUCCEEDED))
        if done == total:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {done} of {total} jobs succeeded in {timeout}s")


def wait_for_first_start(record_file: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (record_file.exists() and record_file.read_text()):
        assert time.monotonic() < deadline, "no worker started the job"
        time.sleep(0.05)


def read_records(path: Path) -> list[tuple[str, int, str]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(job_id, int(pid), event) for job_id, pid, event in rows]


@pytest.mark.postgres_only
def test_four_workers_run_200_jobs_exactly_once(pool, session_factory, tmp_path):
    with session_factory.begin() as session:
        ids = [service.enqueue(session, kind="test.record").id for _ in range(200)]
    pool.start(4)
    wait_until_done(session_factory, 200, timeout=120)

    records = read_records(tmp_path / "record.log")
    starts = Counter(job_id for job_id, _, event in records if event == "start")
    assert set(starts) == set(ids)
    assert set(starts.values()) == {1}, "some job ran twice"
    pids = {pid for _, pid, _ in records}
    assert len(pids) >= 2, "the work should spread over several workers"
    with session_factory() as session:
        attempts = session.scalars(select(Job.attempts)).all()
    assert set(attempts) == {1}


@pytest.mark.postgres_only
def test_job_of_a_killed_worker_is_reclaimed_and_finished_by_another(
    pool, session_factory, tmp_path
):
    with session_factory.begin() as session:
        job_id = service.enqueue(session, kind="test.record", payload={"sleepSeconds": 3}).id
    pool.start(1)
    record_file = tmp_path / "record.log"
    wait_for_first_start(record_file)
    victim = pool.processes[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    pool.start(2)

    wait_until_done(session_factory, 1, timeout=60)
    records = read_records(record_file)
    assert records[0][1:] == (victim.pid, "start")
    finishers = [pid for _, pid, event in records if event == "end"]
    assert len(finishers) == 1 and finishers[0] != victim.pid
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.attempts == 2
        assert job.result == {"pid": finishers[0]}
        assert job.last_error is not None and str(victim.pid) in job.last_error["message"]


def test_sigterm_hands_a_running_job_back_and_exits_cleanly(
    database_url, session_factory, tmp_path
):
    pool = WorkerPool(database_url, tmp_path / "record.log")
    with session_factory.begin() as session:
        job_id = service.enqueue(session, kind="test.record", payload={"sleepSeconds": 30}).id
    pool.start(1)
    try:
        wait_for_first_start(tmp_path / "record.log")
        worker = pool.processes[0]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        pool.stop()
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.state == JobState.QUEUED
        assert job.attempts == 0, "a handed-back job does not lose an attempt"
        assert job.lease_owner is None

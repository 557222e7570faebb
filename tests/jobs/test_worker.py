"""The worker loop against a real database: success, retries, cancel, reclaim, periodic, stop."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.job import Job, JobState
from app.errors import InvalidInput, Unavailable
from app.jobs import repository, service
from app.jobs.context import JobContext
from app.jobs.registry import JobRegistry, PeriodicJob, default_registry
from app.jobs.worker import Worker
from app.kit.clock import utcnow


def make_worker(
    settings: Settings,
    session_factory: sessionmaker[Session],
    registry: JobRegistry,
    name: str = "w1",
) -> Worker:
    return Worker(
        settings=settings, session_factory=session_factory, registry=registry, worker_id=name
    )


def enqueue(session_factory: sessionmaker[Session], kind: str, **kwargs: Any) -> str:
    with session_factory.begin() as session:
        return service.enqueue(session, kind=kind, **kwargs).id


def load(session_factory: sessionmaker[Session], job_id: str) -> Job:
    with session_factory() as session:
        job = repository.get(session, job_id)
        assert job is not None
        return job


def test_noop_job_succeeds_with_response(settings, session_factory):
    job_id = enqueue(session_factory, "noop", payload={"sleepSeconds": 0.01})
    ran = make_worker(settings, session_factory, default_registry()).run(stop_when_idle=True)
    job = load(session_factory, job_id)
    assert ran == 1
    assert job.state == JobState.SUCCEEDED
    assert job.result == {"sleptSeconds": 0.01}
    assert job.progress == 1.0
    assert job.attempts == 1
    assert job.lease_owner is None
    assert job.started_at is not None and job.finished_at >= job.started_at
    assert job.duration_seconds is not None and job.duration_seconds >= 0.01


def test_enqueue_belongs_to_the_callers_transaction(settings, session_factory):
    with session_factory() as session:
        service.enqueue(session, kind="noop")
        session.rollback()
    assert make_worker(settings, session_factory, default_registry()).run(stop_when_idle=True) == 0


def test_job_not_due_yet_is_not_claimed(settings, session_factory):
    job_id = enqueue(session_factory, "noop", run_after=utcnow() + timedelta(hours=1))
    assert make_worker(settings, session_factory, default_registry()).run_once() is False
    assert load(session_factory, job_id).state == JobState.QUEUED


def test_unknown_kind_is_left_for_a_worker_that_knows_it(settings, session_factory):
    job_id = enqueue(session_factory, "not.registered.here")
    assert make_worker(settings, session_factory, default_registry()).run_once() is False
    assert load(session_factory, job_id).state == JobState.QUEUED


def test_handler_writes_commit_with_completion_and_roll_back_on_failure(settings, session_factory):
    registry = JobRegistry()

    def writes_then_maybe_fails(ctx: JobContext) -> dict[str, Any]:
        # A domain write through the task's session: it must land only with SUCCEEDED.
        service.enqueue(ctx.session, kind="child", payload={"parent": ctx.job_id})
        if ctx.payload.get("fail"):
            raise InvalidInput("bad dataset")
        return {"ok": True}

    registry.register("parent", writes_then_maybe_fails)
    good = enqueue(session_factory, "parent")
    bad = enqueue(session_factory, "parent", payload={"fail": True})
    make_worker(settings, session_factory, registry).run(stop_when_idle=True)

    with session_factory() as session:
        children = session.query(Job).filter(Job.kind == "child").all()
    assert [c.payload["parent"] for c in children] == [good]
    failed = load(session_factory, bad)
    assert failed.state == JobState.FAILED
    assert failed.attempts == 1, "a client error is permanent: no retry"
    assert failed.error == {"code": 3, "status": "INVALID_ARGUMENT", "message": "bad dataset"}


def test_crashing_job_is_retried_then_fails_with_the_exception(settings, session_factory):
    registry = JobRegistry()
    calls: list[int] = []

    def crashes(ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError("boom")

    registry.register("crash", crashes)
    job_id = enqueue(session_factory, "crash", max_attempts=3)
    make_worker(settings, session_factory, registry).run(stop_when_idle=True)
    job = load(session_factory, job_id)
    assert calls == [1, 2, 3]
    assert job.state == JobState.FAILED
    assert job.error == {"code": 13, "status": "INTERNAL", "message": "RuntimeError: boom"}
    assert job.last_error == job.error


def test_retry_waits_for_backoff(settings, session_factory):
    registry = JobRegistry()
    registry.register("flaky", lambda ctx: (_ for _ in ()).throw(Unavailable("remote down")))
    slow = settings.model_copy(update={"job_retry_backoff_seconds": 30.0})
    job_id = enqueue(session_factory, "flaky")
    make_worker(slow, session_factory, registry).run(stop_when_idle=True)
    job = load(session_factory, job_id)
    assert job.state == JobState.QUEUED
    assert job.attempts == 1
    assert job.last_error["status"] == "UNAVAILABLE"
    assert job.run_after - utcnow() > timedelta(seconds=25)


def test_cancel_queued_job_is_immediate(session_factory):
    job_id = enqueue(session_factory, "noop")
    with session_factory.begin() as session:
        job = service.cancel(session, job_id=job_id)
    assert job.state == JobState.CANCELLED
    assert job.error["code"] == 1


def test_cancel_running_job_stops_it_at_a_checkpoint(settings, session_factory):
    registry = JobRegistry()
    started = threading.Event()

    def long_job(ctx: JobContext) -> None:
        started.set()
        for step in range(500):
            ctx.report_progress(step / 500, step=step)
            time.sleep(0.02)

    registry.register("long", long_job)
    job_id = enqueue(session_factory, "long")
    worker = make_worker(settings, session_factory, registry)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    assert started.wait(5)
    time.sleep(0.1)
    with session_factory.begin() as session:
        assert service.cancel(session, job_id=job_id).state == JobState.CANCELLING
    thread.join(10)
    assert not thread.is_alive()
    job = load(session_factory, job_id)
    assert job.state == JobState.CANCELLED
    assert 0 < job.progress < 1
    assert job.progress_details["step"] > 0


def test_cancel_finished_job_is_a_failed_precondition(settings, session_factory):
    from app.errors import FailedPrecondition

    job_id = enqueue(session_factory, "noop")
    make_worker(settings, session_factory, default_registry()).run(stop_when_idle=True)
    with session_factory.begin() as session, pytest.raises(FailedPrecondition, match="SUCCEEDED"):
        service.cancel(session, job_id=job_id)


def test_stalled_job_is_reclaimed_and_its_late_result_dropped(settings, session_factory):
    job_id = enqueue(session_factory, "noop")
    with session_factory.begin() as session:
        assert repository.claim(session, worker_id="dead", kinds=["noop"]) == job_id
    # The dead worker never heartbeats again; after the stall timeout the job is reclaimed.
    time.sleep(settings.job_stall_timeout_seconds + 0.2)
    worker = make_worker(settings, session_factory, default_registry())
    assert worker.reclaim_stalled() == 1
    job = load(session_factory, job_id)
    assert job.state == JobState.QUEUED
    assert job.last_error["status"] == "UNAVAILABLE"
    assert "dead" in job.last_error["message"]
    assert worker.run(stop_when_idle=True) == 1
    assert load(session_factory, job_id).state == JobState.SUCCEEDED
    with session_factory.begin() as session:
        late = repository.finish(
            session, job_id=job_id, worker_id="dead", state=JobState.FAILED, duration_seconds=1
        )
    assert late is False
    job = load(session_factory, job_id)
    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 2


def test_stalled_job_out_of_attempts_fails(settings, session_factory):
    job_id = enqueue(session_factory, "noop", max_attempts=1)
    with session_factory.begin() as session:
        repository.claim(session, worker_id="dead", kinds=["noop"])
    time.sleep(settings.job_stall_timeout_seconds + 0.2)
    make_worker(settings, session_factory, default_registry()).reclaim_stalled()
    job = load(session_factory, job_id)
    assert job.state == JobState.FAILED
    assert "stopped heartbeating" in job.error["message"]


def test_heartbeat_keeps_a_long_job_alive(settings, session_factory):
    registry = JobRegistry()
    # Runs three stall timeouts without a single progress report: only heartbeats keep it.
    registry.register("quiet", lambda ctx: time.sleep(settings.job_stall_timeout_seconds * 3))
    job_id = enqueue(session_factory, "quiet")
    worker = make_worker(settings, session_factory, registry)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    other = make_worker(settings, session_factory, registry, name="w2")
    deadline = time.monotonic() + settings.job_stall_timeout_seconds * 2.5
    while time.monotonic() < deadline:
        assert other.reclaim_stalled() == 0
        time.sleep(0.2)
    thread.join(10)
    assert load(session_factory, job_id).state == JobState.SUCCEEDED


def test_stop_request_releases_the_job_without_counting_the_attempt(settings, session_factory):
    registry = JobRegistry()
    started = threading.Event()

    def long_job(ctx: JobContext) -> None:
        started.set()
        while True:
            time.sleep(0.02)
            ctx.checkpoint()

    registry.register("long", long_job)
    job_id = enqueue(session_factory, "long")
    worker = make_worker(settings, session_factory, registry)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(5)
    worker.request_stop()
    thread.join(10)
    job = load(session_factory, job_id)
    assert job.state == JobState.QUEUED
    assert job.attempts == 0
    assert job.lease_owner is None


def test_periodic_job_is_enqueued_once_per_slot_across_workers(settings, session_factory):
    registry = JobRegistry()
    registry.register("poll", lambda ctx: None)
    registry.register_periodic(PeriodicJob(name="poller", kind="poll", every=timedelta(hours=1)))
    workers = [make_worker(settings, session_factory, registry, name=f"w{i}") for i in range(3)]
    for worker in workers:
        worker.maintain()
    with session_factory() as session:
        jobs = session.query(Job).filter(Job.kind == "poll").all()
    assert len(jobs) == 1
    assert jobs[0].dedupe_key.startswith("periodic:poller:")


def test_periodic_job_is_not_stacked_while_one_is_pending(settings, session_factory):
    registry = JobRegistry()
    registry.register("poll", lambda ctx: None)
    registry.register_periodic(
        PeriodicJob(name="poller", kind="poll", every=timedelta(seconds=0.001))
    )
    worker = make_worker(settings, session_factory, registry)
    for _ in range(3):
        with session_factory.begin() as session:
            service.enqueue_periodic(session, periodic=registry.periodic[0], max_attempts=1)
        time.sleep(0.01)
    with session_factory() as session:
        assert session.query(Job).filter(Job.kind == "poll").count() == 1
    worker.run(stop_when_idle=True)
    with session_factory.begin() as session:
        assert service.enqueue_periodic(session, periodic=registry.periodic[0], max_attempts=1)


def test_two_workers_never_claim_the_same_job(settings, session_factory):
    for _ in range(20):
        enqueue(session_factory, "noop")
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        while True:
            with session_factory.begin() as session:
                job_id = repository.claim(session, worker_id=name, kinds=["noop"])
            if job_id is None:
                return
            with lock:
                claimed.append(job_id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 20
    assert len(set(claimed)) == 20


def test_payload_must_be_small(session_factory):
    with session_factory() as session, pytest.raises(ValueError, match="pass ids"):
        service.enqueue(session, kind="noop", payload={"blob": "x" * 10_000})


def test_a_cancelled_job_that_then_fails_ends_cancelled_not_retried(settings, session_factory):
    registry = JobRegistry()
    started = threading.Event()
    release = threading.Event()

    def fails_after_cancel(ctx: JobContext) -> None:
        started.set()
        release.wait(10)
        raise RuntimeError("crashed while being cancelled")

    registry.register("fragile", fails_after_cancel)
    job_id = enqueue(session_factory, "fragile", max_attempts=3)
    thread = threading.Thread(target=make_worker(settings, session_factory, registry).run_once)
    thread.start()
    assert started.wait(5)
    with session_factory.begin() as session:
        service.cancel(session, job_id=job_id)
    release.set()
    thread.join(10)
    job = load(session_factory, job_id)
    assert job.state == JobState.CANCELLED
    assert job.attempts == 1
    assert job.lease_owner is None

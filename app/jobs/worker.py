"""The worker: claims due jobs, runs their handlers under a heartbeat, records the outcome.

One job at a time per process (training takes the whole CPU); run more processes, on more
machines, for more throughput. The loop also reclaims jobs whose worker died and enqueues
periodic jobs. On PostgreSQL an idle worker sleeps on LISTEN, so a new job starts at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from types import FrameType
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, open_settings_blob_store
from app.db.job import JobState
from app.errors import AppError
from app.jobs import repository, service
from app.jobs.context import HandedOff, JobCancelled, JobContext, LeaseLost, WorkerStopping
from app.jobs.registry import JobRegistry
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import new_id

log = logging.getLogger(__name__)

PERIODIC_CHECK_SECONDS = 1.0


class _Heartbeat(threading.Thread):
    """Renews a running job's lease and notices cancellation or a lost lease."""

    def __init__(self, worker: Worker, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.worker = worker
        self.ctx = ctx
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.worker.settings.job_heartbeat_seconds):
            if self.worker.orphaned():
                self.worker.request_stop()
            try:
                self.worker.beat(self.ctx)
            except Exception:
                # A database blip must not kill the job; the stall timeout covers real outages.
                log.warning(
                    "jobs.heartbeat.failed", exc_info=True, extra={"job_id": self.ctx.job_id}
                )


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: sessionmaker[Session],
        registry: JobRegistry,
        worker_id: str | None = None,
        parent_pid: int | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.registry = registry
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self.stopping = threading.Event()
        self._current: JobContext | None = None
        self._in_handler = False
        self._last_reclaim = 0.0
        self._last_periodic = 0.0
        self._listener: Any = None
        # A worker started by `serve` stops when that process is gone, even after SIGKILL.
        self.parent_pid = parent_pid
        self._blobs = blobs

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = open_settings_blob_store(self.settings)
        return self._blobs

    # -- lifecycle -------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT once: finish or hand back the current job. Twice: hand back now."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self.stopping.is_set():
                log.warning("worker.stop.forced", extra={"signal": signum})
                # Interrupt only a task's own code: elsewhere the loop is about to exit,
                # and an exception between claim and bookkeeping would strand the job.
                if self._in_handler:
                    raise WorkerStopping("second stop signal")
                return
            log.info("worker.stop.requested", extra={"signal": signum})
            self.request_stop()
            grace = self.settings.worker_shutdown_grace_seconds
            timer = threading.Timer(grace, os.kill, args=(os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def request_stop(self) -> None:
        self.stopping.set()
        if self._current is not None:
            self._current.stop_requested.set()

    def run(self, *, max_jobs: int | None = None, stop_when_idle: bool = False) -> int:
        """Work until asked to stop; returns the number of jobs run."""
        log.info(
            "worker.started", extra={"worker_id": self.worker_id, "kinds": self.registry.kinds}
        )
        ran = 0
        try:
            # Listen before the first claim, so a job enqueued in between still wakes us.
            self._ensure_listener()
            while not self.stopping.is_set():
                if self.orphaned():
                    log.warning("worker.parent.gone", extra={"parent_pid": self.parent_pid})
                    self.request_stop()
                    break
                self.maintain()
                if self.run_once():
                    ran += 1
                    if max_jobs is not None and ran >= max_jobs:
                        break
                    continue
                if stop_when_idle:
                    break
                self._wait_for_work()
        finally:
            self._close_listener()
            log.info("worker.stopped", extra={"worker_id": self.worker_id, "jobs_run": ran})
        return ran

    # -- one job ---------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim and run one due job; false when none was due."""
        with self.session_factory.begin() as session:
            job_id = repository.claim(session, worker_id=self.worker_id, kinds=self.registry.kinds)
            job = repository.get(session, job_id) if job_id else None
            if job is None:
                return False
            kind, payload = job.kind, dict(job.payload)
            attempt, max_attempts = job.attempts, job.max_attempts
        log.info("jobs.job.claimed", extra={"job_id": job_id, "kind": kind, "attempt": attempt})
        self._run(job.id, kind, payload, attempt, max_attempts)
        return True

    def _run(
        self, job_id: str, kind: str, payload: dict[str, Any], attempt: int, max_attempts: int
    ) -> None:
        job_kind = self.registry.get(kind)
        assert job_kind is not None, "claim only takes registered kinds"
        started = time.monotonic()
        with self.session_factory() as session:
            ctx = JobContext(
                job_id=job_id,
                kind=kind,
                worker_id=self.worker_id,
                payload=payload,
                attempt=attempt,
                max_attempts=max_attempts,
                settings=self.settings,
                session=session,
                session_factory=self.session_factory,
                blobs=self.blobs,
                _report=lambda fraction, details: self._report(job_id, fraction, details),
            )
            if self.stopping.is_set():
                ctx.stop_requested.set()
            self._current = ctx
            heartbeat = _Heartbeat(self, ctx)
            heartbeat.start()
            try:
                self._in_handler = True
                try:
                    result = job_kind.handler(ctx)
                except HandedOff:
                    # The task's writes (its next phase) land with the hand-off, or neither.
                    if not repository.hand_off(session, job_id=job_id, worker_id=self.worker_id):
                        raise LeaseLost(job_id) from None
                    session.commit()
                    log.info("jobs.job.handed_off", extra={"job_id": job_id, "kind": kind})
                    return
                finally:
                    self._in_handler = False
                finished = repository.finish(
                    session,
                    job_id=job_id,
                    worker_id=self.worker_id,
                    state=JobState.SUCCEEDED,
                    duration_seconds=time.monotonic() - started,
                    result=result or {},
                )
                if not finished:
                    raise LeaseLost(job_id)
                session.commit()
                log.info("jobs.job.succeeded", extra={"job_id": job_id, "kind": kind})
            except LeaseLost:
                session.rollback()
                log.warning("jobs.job.lease_lost", extra={"job_id": job_id, "kind": kind})
            except JobCancelled:
                session.rollback()
                self._end(job_id, JobState.CANCELLED, started, error=service.CANCELLED_STATUS)
                log.info("jobs.job.cancelled", extra={"job_id": job_id, "kind": kind})
            except WorkerStopping:
                session.rollback()
                with self.session_factory.begin() as tx:
                    repository.release(tx, job_id=job_id, worker_id=self.worker_id)
                log.info("jobs.job.released", extra={"job_id": job_id, "kind": kind})
            except AppError as exc:
                session.rollback()
                self._failed(
                    job_id, kind, started, exc.to_rpc_status(), retry=exc.status_code >= 500
                )
            except Exception as exc:
                session.rollback()
                log.exception("jobs.job.crashed", extra={"job_id": job_id, "kind": kind})
                status = {
                    "code": 13,
                    "status": "INTERNAL",
                    "message": f"{type(exc).__name__}: {exc}",
                }
                self._failed(job_id, kind, started, status, retry=True)
            finally:
                heartbeat.done.set()
                heartbeat.join()
                self._current = None

    def _failed(
        self, job_id: str, kind: str, started: float, error: dict[str, Any], *, retry: bool
    ) -> None:
        with self.session_factory.begin() as session:
            job = repository.get(session, job_id)
            if job is None or job.lease_owner != self.worker_id:
                return
            if job.state == JobState.CANCELLING:
                outcome = JobState.CANCELLED  # the caller asked it to stop: no retry
            elif retry and job.attempts < job.max_attempts:
                run_after = utcnow() + repository.backoff(
                    self.settings.job_retry_backoff_seconds, job.attempts
                )
                repository.retry_later(
                    session,
                    job_id=job_id,
                    worker_id=self.worker_id,
                    run_after=run_after,
                    error=error,
                )
                log.warning(
                    "jobs.job.retrying",
                    extra={"job_id": job_id, "kind": kind, "attempt": job.attempts, "error": error},
                )
                return
            else:
                outcome = JobState.FAILED
        if outcome == JobState.CANCELLED:
            self._end(job_id, outcome, started, error=service.CANCELLED_STATUS)
            log.info("jobs.job.cancelled", extra={"job_id": job_id, "kind": kind})
            return
        self._end(job_id, outcome, started, error=error)
        log.error("jobs.job.failed", extra={"job_id": job_id, "kind": kind, "error": error})

    def _end(
        self, job_id: str, state: JobState, started: float, *, error: dict[str, Any] | None
    ) -> None:
        with self.session_factory.begin() as session:
            repository.finish(
                session,
                job_id=job_id,
                worker_id=self.worker_id,
                state=state,
                duration_seconds=time.monotonic() - started,
                error=error,
            )

    def _report(self, job_id: str, fraction: float, details: dict[str, Any] | None) -> None:
        with self.session_factory.begin() as session:
            state = repository.heartbeat(
                session,
                job_id=job_id,
                worker_id=self.worker_id,
                progress=fraction,
                progress_details=details,
            )
        self._note_state(state)

    def beat(self, ctx: JobContext) -> None:
        with self.session_factory.begin() as session:
            state = repository.heartbeat(session, job_id=ctx.job_id, worker_id=self.worker_id)
        self._note_state(state, ctx)

    def _note_state(self, state: str | None, ctx: JobContext | None = None) -> None:
        ctx = ctx or self._current
        if ctx is None:
            return
        if state is None:
            ctx.lease_lost.set()
        elif state == JobState.CANCELLING:
            ctx.cancel_requested.set()

    # -- housekeeping ----------------------------------------------------------------------

    def maintain(self) -> None:
        """Reclaim stalled jobs and enqueue due periodic jobs, each at its own pace."""
        now = time.monotonic()
        if now - self._last_reclaim >= self.settings.job_stall_timeout_seconds / 4:
            self._last_reclaim = now
            self.reclaim_stalled()
        if self.registry.periodic and now - self._last_periodic >= PERIODIC_CHECK_SECONDS:
            self._last_periodic = now
            with self.session_factory.begin() as session:
                for periodic in self.registry.periodic:
                    service.enqueue_periodic(
                        session,
                        periodic=periodic,
                        max_attempts=self.settings.job_max_attempts,
                        every=periodic.interval(self.settings),
                    )

    def reclaim_stalled(self) -> int:
        """Requeue (with backoff) or fail jobs whose worker stopped heartbeating."""
        now = utcnow()
        cutoff = now - timedelta(seconds=self.settings.job_stall_timeout_seconds)
        with self.session_factory.begin() as session:
            jobs = repository.stalled(session, cutoff=cutoff)
            for job in jobs:
                error = {
                    "code": 14,
                    "status": "UNAVAILABLE",
                    "message": f"worker {job.lease_owner} stopped heartbeating",
                }
                if job.state == JobState.CANCELLING:
                    values: dict[str, Any] = {
                        "state": JobState.CANCELLED,
                        "error": service.CANCELLED_STATUS,
                        "finished_at": now,
                    }
                elif job.attempts < job.max_attempts:
                    backoff = repository.backoff(
                        self.settings.job_retry_backoff_seconds, job.attempts
                    )
                    values = {
                        "state": JobState.QUEUED,
                        "run_after": now + backoff,
                        "last_error": error,
                    }
                else:
                    values = {"state": JobState.FAILED, "error": error, "finished_at": now}
                repository.transition(
                    session,
                    job_id=job.id,
                    from_state=JobState(job.state),
                    values={**values, "lease_owner": None},
                )
                log.warning(
                    "jobs.job.reclaimed",
                    extra={"job_id": job.id, "kind": job.kind, "new_state": str(values["state"])},
                )
        return len(jobs)

    def _wait_for_work(self) -> None:
        timeout = self.settings.worker_poll_seconds
        listener = self._ensure_listener()
        if listener is None:
            self.stopping.wait(timeout)
            return
        try:
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                break
        except Exception:
            log.warning("worker.listen.failed", exc_info=True)
            self._close_listener()
            self.stopping.wait(timeout)

    def _ensure_listener(self) -> Any:
        if self._listener is not None:
            return self._listener
        engine = self.session_factory.kw["bind"]
        if engine.dialect.name != "postgresql":
            return None
        import psycopg

        url = engine.url.set(drivername="postgresql")
        connection = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        connection.execute(f"LISTEN {repository.NOTIFY_CHANNEL}")
        self._listener = connection
        return connection

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

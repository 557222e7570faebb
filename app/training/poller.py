"""The poller: advances remote training jobs that no worker holds (``training.poll_remote``).

A remote job's queue job stays RUNNING (or CANCELLING) under the remote lease while Vertex AI
works; this periodic job polls each one whose ``next_poll_at`` is due and moves it on:

- still running: store the remote state (and progress), poll again in ``remote_poll_seconds``;
- a transient error (UNAVAILABLE, DEADLINE_EXCEEDED, 429, 5xx, connection): count it, show it
  as ``lastPollError``, poll again after an exponential backoff (capped);
- a permanent error (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, ...): FAILED with the
  remote code and message;
- FAILED or CANCELLED remotely: the same outcome, with Vertex's error;
- CANCELLING here: cancel the remote run once (``cancelRequested``), then wait for it to end;
- SUCCEEDED: hand the queue job back to the queue in phase COLLECTING, where a worker
  fetches and registers the model.

Every poll first takes the job's due slot with a compare-and-set on ``next_poll_at``, so two
pollers never poll one job at once; every outcome is a compare-and-set on the remote lease,
so a repeated poll never finishes a job twice or hands it back twice. The state is all rows:
a restarted service carries on where it stopped.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as google_exceptions
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.job import JobState
from app.db.training_job import Phase
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs_service
from app.jobs.context import JobContext
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.training import backends, repository, service
from app.training.backends.base import (
    RemoteCallFailed,
    RemoteRun,
    RemoteState,
    RemoteStatus,
    TrainingBackend,
    is_transient,
    rpc_status,
    status_of,
)
from app.training.tasks import remote_run

log = logging.getLogger(__name__)

# Jobs one poll run looks at; the rest wait for the next run (the oldest due go first).
POLL_BATCH = 50
# A claimed poll slot outlives the poll this long at least: a poller that dies mid-poll
# frees the job for another after it.
MIN_POLL_LEASE_SECONDS = 60.0


def has_work(session: Session) -> bool:
    """Whether the periodic poll is worth a queue row (some job is held remotely)."""
    return repository.any_remote(session)


def poll_remote(ctx: JobContext) -> dict[str, Any]:
    """Poll every remote training job that is due, once each."""
    poller = Poller(settings=ctx.settings, blobs=ctx.blobs, session_factory=ctx.session_factory)
    polled = poller.poll_due(checkpoint=ctx.checkpoint)
    return {"polled": polled}


class Poller:
    def __init__(
        self, *, settings: Settings, blobs: BlobStore, session_factory: sessionmaker[Session]
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.session_factory = session_factory
        self.interval = timedelta(seconds=settings.remote_poll_seconds)

    def poll_due(self, *, checkpoint: Any = None) -> int:
        """Poll the due jobs; how many this call polled (another poller may take some)."""
        with self.session_factory.begin() as session:
            due = list(repository.due_for_poll(session, now=utcnow(), limit=POLL_BATCH))
        polled = 0
        for training_job_id in due:
            if checkpoint is not None:
                checkpoint()  # stop between jobs when the worker is stopping
            if self.poll_one(training_job_id):
                polled += 1
        return polled

    def poll_one(self, training_job_id: str) -> bool:
        """Poll one job if its poll is due and no other poller has it; false otherwise."""
        now = utcnow()
        lease = max(MIN_POLL_LEASE_SECONDS, 4 * self.settings.remote_poll_seconds)
        with self.session_factory.begin() as session:
            if not repository.claim_poll(
                session, training_job_id, now=now, until=now + timedelta(seconds=lease)
            ):
                return False
            found = repository.get_with_job(session, training_job_id)
            assert found is not None
            row, job = found
            if job.lease_owner != jobs_repository.REMOTE_LEASE or job.state not in (
                JobState.RUNNING,
                JobState.CANCELLING,
            ):
                return False
            job_id, cancelling = job.id, job.state == JobState.CANCELLING
            failures = row.poll_failures
            backend = backends.get_backend(row.backend, self.settings)
            run = remote_run(
                row,
                settings=self.settings,
                blobs=self.blobs,
                session_factory=self.session_factory,
            )
        try:
            if cancelling and not run.remote.get("cancelRequested"):
                self._cancel(backend, run)
            status = backend.poll(run)
        except Exception as exc:
            self._poll_failed(run, job_id, failures, exc, cancelling=cancelling)
            return True
        self._advance(backend, run, job_id, status, cancelling=cancelling)
        return True

    # -- outcomes --------------------------------------------------------------------------

    def _cancel(self, backend: TrainingBackend, run: RemoteRun) -> None:
        try:
            backend.cancel(run)
        except Exception as exc:
            if is_transient(exc) or not _remote_error(exc):
                raise
            # Refused for good (already finished, say): the poll below says how it ended.
            log.warning(
                "training.remote.cancel_refused",
                extra={"training_job_id": run.training_job_id, "error": rpc_status(exc)},
            )
        run.save_remote(cancelRequested=True)
        log.info("training.remote.cancel_requested", extra={"training_job_id": run.training_job_id})

    def _poll_failed(
        self, run: RemoteRun, job_id: str, failures: int, exc: Exception, *, cancelling: bool
    ) -> None:
        status = rpc_status(exc)
        if _remote_error(exc) and not is_transient(exc):
            # The remote run is gone or out of reach for good: the job ends with why.
            outcome = JobState.CANCELLED if cancelling else JobState.FAILED
            error = jobs_service.CANCELLED_STATUS if cancelling else status
            self._finish(run, job_id, outcome, error=error, remote_state=None)
            return
        if not _remote_error(exc):
            # A bug or an unexpected answer: logged in full, retried like an outage, so that
            # a remote run that is fine is not abandoned (lastPollError shows it meanwhile).
            log.exception(
                "training.remote.poll_crashed", extra={"training_job_id": run.training_job_id}
            )
        failures += 1
        delay = min(
            self.settings.remote_poll_max_backoff_seconds,
            self.settings.remote_poll_seconds * 2**failures,
        )
        with self.session_factory.begin() as session:
            repository.set_values(
                session,
                run.training_job_id,
                poll_failures=failures,
                last_poll_error=status,
                next_poll_at=utcnow() + timedelta(seconds=delay),
            )
        log.warning(
            "training.remote.poll_failed",
            extra={
                "training_job_id": run.training_job_id,
                "failures": failures,
                "retry_in": delay,
                "error": status,
            },
        )

    def _advance(
        self,
        backend: TrainingBackend,
        run: RemoteRun,
        job_id: str,
        status: RemoteStatus,
        *,
        cancelling: bool,
    ) -> None:
        if status.state == RemoteState.FAILED:
            error = status_of(status.error, default_code=13)
            self._finish(
                run, job_id, JobState.FAILED, error=error, remote_state=status.remote_state
            )
        elif status.state == RemoteState.CANCELLED:
            error = (
                jobs_service.CANCELLED_STATUS
                if cancelling or run.remote.get("cancelRequested")
                else status_of(status.error, default_code=1)
            )
            self._finish(
                run, job_id, JobState.CANCELLED, error=error, remote_state=status.remote_state
            )
        elif status.state == RemoteState.SUCCEEDED and cancelling:
            # It finished before the cancel took: the caller asked for no model, so none.
            self._finish(
                run,
                job_id,
                JobState.CANCELLED,
                error=jobs_service.CANCELLED_STATUS,
                remote_state=status.remote_state,
            )
        elif status.state == RemoteState.SUCCEEDED:
            self._hand_back(run, job_id, status)
        else:
            self._still_running(run, status)

    def _still_running(self, run: RemoteRun, status: RemoteStatus) -> None:
        values: dict[str, Any] = {
            "remote_state": status.remote_state,
            "poll_failures": 0,
            "last_poll_error": None,
            "next_poll_at": utcnow() + self.interval,
        }
        if status.progress is not None:
            values["progress"] = status.progress
        with self.session_factory.begin() as session:
            repository.set_values(session, run.training_job_id, **values)

    def _hand_back(self, run: RemoteRun, job_id: str, status: RemoteStatus) -> None:
        with self.session_factory.begin() as session:
            handed = jobs_repository.hand_back(session, job_id=job_id)
            if handed:
                repository.set_values(
                    session,
                    run.training_job_id,
                    phase=Phase.COLLECTING,
                    remote_state=status.remote_state,
                    poll_failures=0,
                    last_poll_error=None,
                    next_poll_at=None,
                )
            else:
                # Cancelled meanwhile (or handed back by another poller): look again soon.
                repository.set_values(
                    session, run.training_job_id, next_poll_at=utcnow() + self.interval
                )
        if handed:
            log.info(
                "training.remote.succeeded",
                extra={"training_job_id": run.training_job_id, "remote_state": status.remote_state},
            )

    def _finish(
        self,
        run: RemoteRun,
        job_id: str,
        state: JobState,
        *,
        error: dict[str, Any],
        remote_state: str | None,
    ) -> None:
        with self.session_factory.begin() as session:
            finished = jobs_repository.finish_remote(
                session, job_id=job_id, state=state, error=error
            )
            values: dict[str, Any] = {"next_poll_at": None}
            if remote_state is not None:
                values["remote_state"] = remote_state
            if finished:
                repository.set_values(session, run.training_job_id, **values)
        if not finished:
            return
        # What the job stored here (the snapshot) goes; the staging bucket is the operator's.
        service.discard_blobs(self.blobs, training_job_id=run.training_job_id)
        log.log(
            logging.INFO if state == JobState.CANCELLED else logging.WARNING,
            "training.remote.finished",
            extra={"training_job_id": run.training_job_id, "state": state.value, "error": error},
        )


def _remote_error(exc: BaseException) -> bool:
    """An answer from the remote service (or its absence), as opposed to a bug of ours."""
    return isinstance(exc, google_exceptions.GoogleAPICallError | RemoteCallFailed) or (
        is_transient(exc)
    )

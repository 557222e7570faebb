"""The one place where every job kind is bound to its handler, and periodic jobs are declared."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.jobs.context import JobContext

Handler = Callable[[JobContext], dict[str, Any] | None]

NOOP = "noop"
MAX_NOOP_SLEEP_SECONDS = 60.0


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: Handler
    max_attempts: int | None = None


@dataclass(frozen=True)
class PeriodicJob:
    """A job enqueued once per ``every`` across all workers (e.g. the Vertex AI poller).

    ``every`` may read the settings (the poller's interval is one); ``when``, if given, is
    asked first, so that a job with nothing to do leaves no row behind every slot.
    """

    name: str
    kind: str
    every: timedelta | Callable[[Settings], timedelta]
    payload: dict[str, Any] = field(default_factory=dict)
    when: Callable[[Session], bool] | None = None

    def interval(self, settings: Settings) -> timedelta:
        return self.every if isinstance(self.every, timedelta) else self.every(settings)


class JobRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self._periodic: dict[str, PeriodicJob] = {}

    def register(self, name: str, handler: Handler, *, max_attempts: int | None = None) -> None:
        if name in self._kinds:
            raise ValueError(f"job kind {name!r} is registered twice")
        self._kinds[name] = JobKind(name, handler, max_attempts)

    def register_periodic(self, job: PeriodicJob) -> None:
        if job.kind not in self._kinds:
            raise ValueError(f"periodic job {job.name!r} names unknown kind {job.kind!r}")
        self._periodic[job.name] = job

    def get(self, name: str) -> JobKind | None:
        return self._kinds.get(name)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    @property
    def periodic(self) -> list[PeriodicJob]:
        return list(self._periodic.values())


def run_noop(ctx: JobContext) -> dict[str, Any]:
    """Does nothing (optionally sleeps, checkpointing): for smoke tests and the queue bench."""
    seconds = float(ctx.payload.get("sleepSeconds", 0.0))
    seconds = min(max(seconds, 0.0), MAX_NOOP_SLEEP_SECONDS)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))
        ctx.checkpoint()
    return {"sleptSeconds": seconds}


def default_registry() -> JobRegistry:
    """Every job kind the service runs. Domains add their ``tasks`` here as they arrive."""
    from app.batch_prediction import service as batch_prediction_service
    from app.batch_prediction import tasks as batch_prediction_tasks
    from app.datasets import service as datasets_service
    from app.datasets import tasks as datasets_tasks
    from app.evaluation import service as evaluation_service
    from app.evaluation import tasks as evaluation_tasks
    from app.registry import mirror as registry_mirror
    from app.registry import service as registry_service
    from app.registry import tasks as registry_tasks
    from app.training import poller as training_poller
    from app.training import service as training_service
    from app.training import tasks as training_tasks

    registry = JobRegistry()
    registry.register(NOOP, run_noop)
    registry.register(datasets_service.IMPORT_KIND, datasets_tasks.import_dataset)
    registry.register(datasets_service.COLLECT_ORPHANS_KIND, datasets_tasks.collect_orphans)
    registry.register(training_service.TRAIN_KIND, training_tasks.train)
    registry.register(training_service.POLL_KIND, training_poller.poll_remote)
    registry.register_periodic(
        PeriodicJob(
            name=training_service.POLL_KIND,
            kind=training_service.POLL_KIND,
            every=lambda settings: timedelta(seconds=settings.remote_poll_seconds),
            when=training_poller.has_work,
        )
    )
    registry.register(evaluation_service.EVALUATE_KIND, evaluation_tasks.evaluate)
    registry.register(registry_service.EXPORT_KIND, registry_tasks.export_model)
    registry.register(registry_service.PURGE_KIND, registry_tasks.purge_model_files)
    registry.register(registry_mirror.MIRROR_KIND, registry_mirror.sync_firebase_mirror)
    registry.register(
        batch_prediction_service.BATCH_PREDICT_KIND, batch_prediction_tasks.predict_batch
    )
    return registry

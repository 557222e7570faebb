"""A worker process with extra job kinds for tests: ``python -m tests.support.worker_main``.

``test.record`` appends "<job id> <pid> start|end" lines to the file named by
TEST_RECORD_FILE (O_APPEND writes of one line are atomic across processes), sleeping
``sleepSeconds`` in between with checkpoints, so a test can count how often each job ran
and kill a worker in the middle of one.
"""

from __future__ import annotations

import os
import time
from typing import Any

from app.config import load_settings
from app.db.session import make_engine, make_session_factory
from app.jobs.context import JobContext
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.kit.logs import configure_logging

RECORD_FILE_ENV = "TEST_RECORD_FILE"


def _record(job_id: str, event: str) -> None:
    line = f"{job_id} {os.getpid()} {event}\n".encode()
    fd = os.open(os.environ[RECORD_FILE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def run_record(ctx: JobContext) -> dict[str, Any]:
    _record(ctx.job_id, "start")
    deadline = time.monotonic() + float(ctx.payload.get("sleepSeconds", 0))
    while time.monotonic() < deadline:
        time.sleep(0.02)
        ctx.checkpoint()
    _record(ctx.job_id, "end")
    return {"pid": os.getpid()}


def main() -> None:
    settings = load_settings()
    configure_logging(fmt="text", level=settings.log_level)
    registry = default_registry()
    registry.register("test.record", run_record)
    worker = Worker(
        settings=settings,
        session_factory=make_session_factory(make_engine(settings.database_url)),
        registry=registry,
    )
    worker.install_signal_handlers()
    worker.run()


if __name__ == "__main__":
    main()

"""Benchmark of the job queue on PostgreSQL: throughput, scaling with workers, start latency.

    .venv/bin/python bench/queue.py [--database-url URL] [--jobs N] [--workers 1,2,4]

It creates a scratch database on the server of ``--database-url``, migrates it, runs real
worker processes (``python -m app worker``) against it and drops it at the end, even on
failure. Every figure is a ratio or a distribution measured in the same run, so compare
runs on the same machine only. Exits non-zero when any job did not run exactly once.
"""

# ruff: noqa: E402 - the sys.path fix below must run before anything imports ``queue``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and this file would then shadow the
# standard library's ``queue`` module, which alembic and psycopg import.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse
import math
import os
import platform
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.db import migrate
from app.db.job import Job, JobState
from app.db.session import make_engine, make_session_factory
from app.jobs import repository, service
from app.jobs.registry import NOOP

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REPO_ROOT = _HERE.parent
PHASE_TIMEOUT_SECONDS = 120.0
TABLE_POLL_SECONDS = 0.05
# While the queue is never empty a worker does not poll, so this only matters at the end.
THROUGHPUT_WORKER_POLL_SECONDS = 1.0
LATENCY_WORKERS = 2
LATENCY_POLL_SECONDS = (1.0, 0.1)
WORKER_STOP_TIMEOUT_SECONDS = 15.0
BATCH = "batch"
WARMUP = "warmup"
LATENCY = "latency"


class BenchError(Exception):
    """A phase could not finish: a job failed, a worker died, or the time ran out."""


@dataclass(frozen=True)
class Throughput:
    workers: int
    jobs: int
    enqueue_s: float
    wall_s: float
    span_s: float
    stop_s: float
    bad_jobs: int

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s

    @property
    def span_jobs_per_s(self) -> float:
        return self.jobs / self.span_s


@dataclass(frozen=True)
class Latency:
    poll_s: float
    notify: bool
    jobs: int
    rate_per_s: float
    latencies_ms: list[float]
    bad_jobs: int


# -- database ----------------------------------------------------------------------------


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A new, migrated database on the server of ``url``; dropped on exit, whatever happens."""
    server = make_url(url)
    name = f"edge_automl_bench_{os.getpid()}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            scratch = server.set(database=name).render_as_string(hide_password=False)
            migrate.upgrade(scratch)
            yield scratch
        finally:
            # FORCE ends any connection a killed worker may have left behind.
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def clear_jobs(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE jobs"))


def state_counts(engine: Engine, description: str) -> dict[str, int]:
    query = (
        select(Job.state, func.count()).where(Job.description == description).group_by(Job.state)
    )
    with engine.connect() as connection:
        return {state: count for state, count in connection.execute(query).all()}


def not_exactly_once(engine: Engine, description: str, expected: int) -> int:
    """How many of the ``expected`` jobs did not end SUCCEEDED after exactly one attempt."""
    ok = (
        select(func.count())
        .where(
            Job.description == description,
            Job.state == JobState.SUCCEEDED,
            Job.attempts == 1,
        )
        .scalar_subquery()
    )
    total = select(func.count()).where(Job.description == description).scalar_subquery()
    with engine.connect() as connection:
        good, rows = connection.execute(select(ok, total)).one()
    return (rows - good) + abs(expected - rows)


def enqueue_many(factory: sessionmaker[Session], *, count: int, description: str) -> None:
    """``count`` no-op jobs in one transaction, as a request that asks for many would."""
    with factory.begin() as session:
        for _ in range(count):
            service.enqueue(session, kind=NOOP, description=description)


def enqueue_one(factory: sessionmaker[Session], *, description: str) -> None:
    with factory.begin() as session:
        service.enqueue(session, kind=NOOP, description=description)


@contextmanager
def notify_disabled() -> Iterator[None]:
    """Enqueue without NOTIFY, so workers find new jobs only by polling (a control run)."""
    original = repository.notify_new_job
    repository.notify_new_job = lambda session: None
    try:
        yield
    finally:
        repository.notify_new_job = original


# -- workers -----------------------------------------------------------------------------


def start_workers(url: str, *, count: int, poll_seconds: float) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "EDGE_AUTOML_DATABASE_URL": url,
        "EDGE_AUTOML_WORKER_POLL_SECONDS": str(poll_seconds),
        "EDGE_AUTOML_LOG_LEVEL": "WARNING",
    }
    return [
        subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(workers: Sequence[subprocess.Popen[bytes]]) -> float:
    """SIGTERM every worker and wait for all; seconds it took. Kills any that hang."""
    started = time.monotonic()
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    hung = []
    for worker in workers:
        try:
            worker.wait(timeout=WORKER_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            hung.append(worker.pid)
    seconds = time.monotonic() - started
    if hung:
        raise BenchError(f"workers {hung} ignored SIGTERM for {WORKER_STOP_TIMEOUT_SECONDS}s")
    codes = [worker.returncode for worker in workers if worker.returncode != 0]
    if codes:
        raise BenchError(f"workers exited with codes {codes}")
    return seconds


@contextmanager
def running_workers(
    url: str, *, count: int, poll_seconds: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    workers = start_workers(url, count=count, poll_seconds=poll_seconds)
    try:
        yield workers
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def check_alive(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    dead = [(w.pid, w.returncode) for w in workers if w.poll() is not None]
    if dead:
        raise BenchError(f"workers died (pid, code): {dead}")


def wait_until_done(
    engine: Engine,
    workers: Sequence[subprocess.Popen[bytes]],
    *,
    description: str,
    expected: int,
) -> None:
    """Poll the table until every job is SUCCEEDED; raise when one fails or time runs out."""
    deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
    while True:
        counts = state_counts(engine, description)
        if counts.get(JobState.SUCCEEDED, 0) >= expected:
            return
        failed = {s: n for s, n in counts.items() if s in (JobState.FAILED, JobState.CANCELLED)}
        if failed:
            raise BenchError(f"{description} jobs ended badly: {failed}")
        check_alive(workers)
        if time.monotonic() > deadline:
            raise BenchError(f"{description} jobs not done in {PHASE_TIMEOUT_SECONDS}s: {counts}")
        time.sleep(TABLE_POLL_SECONDS)


def wait_for_listeners(
    engine: Engine, workers: Sequence[subprocess.Popen[bytes]], *, database: str
) -> None:
    """Wait until every worker is idle on LISTEN, i.e. started and found the queue empty."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND query LIKE 'LISTEN %'"
    )
    deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
    while True:
        with engine.connect() as connection:
            if connection.execute(query, {"db": database}).scalar_one() >= len(workers):
                return
        check_alive(workers)
        if time.monotonic() > deadline:
            raise BenchError(f"workers not listening after {PHASE_TIMEOUT_SECONDS}s")
        time.sleep(TABLE_POLL_SECONDS)


# -- phases ------------------------------------------------------------------------------


def measure_throughput(
    engine: Engine, factory: sessionmaker[Session], url: str, *, workers: int, jobs: int
) -> Throughput:
    """Drain ``jobs`` queued no-ops with ``workers`` fresh processes."""
    clear_jobs(engine)
    started = time.monotonic()
    enqueue_many(factory, count=jobs, description=BATCH)
    enqueue_s = time.monotonic() - started
    started = time.monotonic()
    with running_workers(url, count=workers, poll_seconds=THROUGHPUT_WORKER_POLL_SECONDS) as procs:
        wait_until_done(engine, procs, description=BATCH, expected=jobs)
        wall_s = time.monotonic() - started
        stop_s = stop_workers(procs)
    with engine.connect() as connection:
        first, last = connection.execute(
            select(func.min(Job.started_at), func.max(Job.finished_at)).where(
                Job.description == BATCH
            )
        ).one()
    if first is None or last is None:
        raise BenchError("finished jobs carry no started_at/finished_at")
    return Throughput(
        workers=workers,
        jobs=jobs,
        enqueue_s=enqueue_s,
        wall_s=wall_s,
        span_s=(last - first).total_seconds(),
        stop_s=stop_s,
        bad_jobs=not_exactly_once(engine, BATCH, jobs),
    )


def measure_latency(
    engine: Engine,
    factory: sessionmaker[Session],
    url: str,
    *,
    poll_s: float,
    notify: bool,
    jobs: int,
    rate_per_s: float,
) -> Latency:
    """Enqueue one job per transaction at a steady rate to idle workers; time to start."""
    clear_jobs(engine)
    database = make_url(url).database or ""
    with running_workers(url, count=LATENCY_WORKERS, poll_seconds=poll_s) as procs:
        wait_for_listeners(engine, procs, database=database)
        # Warm every code path and connection pool before anything is timed.
        for _ in range(2 * LATENCY_WORKERS):
            enqueue_one(factory, description=WARMUP)
        wait_until_done(engine, procs, description=WARMUP, expected=2 * LATENCY_WORKERS)
        time.sleep(0.3)  # let both workers go back to sleep on LISTEN
        with nullcontext() if notify else notify_disabled():
            started = time.monotonic()
            for i in range(jobs):
                pause = started + i / rate_per_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                enqueue_one(factory, description=LATENCY)
            achieved = jobs / (time.monotonic() - started)
        wait_until_done(engine, procs, description=LATENCY, expected=jobs)
        stop_workers(procs)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Job.created_at, Job.started_at).where(Job.description == LATENCY)
        ).all()
    latencies_ms = [
        (start - created).total_seconds() * 1000 for created, start in rows if start is not None
    ]
    if len(latencies_ms) != jobs:
        raise BenchError(f"{jobs - len(latencies_ms)} latency jobs have no started_at")
    return Latency(
        poll_s=poll_s,
        notify=notify,
        jobs=jobs,
        rate_per_s=achieved,
        latencies_ms=latencies_ms,
        bad_jobs=not_exactly_once(engine, LATENCY, jobs),
    )


# -- report ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``p``% of values at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def machine_line(engine: Engine) -> str:
    with engine.connect() as connection:
        server = connection.execute(text("SHOW server_version")).scalar_one()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"queue.machine cores={os.cpu_count()} usable_cores={usable} "
        f"python={platform.python_version()} postgres={server.split()[0]}"
    )


def throughput_line(result: Throughput) -> str:
    return (
        f"queue.throughput workers={result.workers} jobs={result.jobs} "
        f"wall_s={result.wall_s:.2f} jobs_per_s={result.jobs_per_s:.0f} "
        f"span_s={result.span_s:.2f} span_jobs_per_s={result.span_jobs_per_s:.0f} "
        f"enqueue_s={result.enqueue_s:.2f} stop_s={result.stop_s:.2f} "
        f"not_exactly_once={result.bad_jobs}"
    )


def scaling_line(result: Throughput, baseline: Throughput) -> str:
    return (
        f"queue.scaling workers={result.workers} vs {baseline.workers}: "
        f"x{result.jobs_per_s / baseline.jobs_per_s:.2f} (wall) "
        f"x{result.span_jobs_per_s / baseline.span_jobs_per_s:.2f} (span)"
    )


def latency_line(result: Latency) -> str:
    values = result.latencies_ms
    return (
        f"queue.latency poll_s={result.poll_s} notify={'on' if result.notify else 'off'} "
        f"workers={LATENCY_WORKERS} jobs={result.jobs} rate_per_s={result.rate_per_s:.1f} "
        f"p50_ms={percentile(values, 50):.1f} p90_ms={percentile(values, 90):.1f} "
        f"p99_ms={percentile(values, 99):.1f} max_ms={max(values):.1f} "
        f"not_exactly_once={result.bad_jobs}"
    )


LEGEND = (
    "# wall_s: from spawning the workers until the bench sees every job SUCCEEDED "
    "(includes process start-up); jobs_per_s = jobs / wall_s",
    "# span_s: max(finished_at) - min(started_at) from the rows (excludes start-up); "
    "span_jobs_per_s = jobs / span_s",
    "# latency: started_at - created_at per job (created_at is stamped before the enqueue "
    "commits); nearest-rank percentiles",
    "# notify=off is a control: jobs enqueued without NOTIFY, found only by polling",
)


# -- entry point -------------------------------------------------------------------------


def worker_counts(value: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("worker counts must be positive")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="any database on the PostgreSQL server to use; a scratch one is made beside it",
    )
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput run")
    parser.add_argument("--workers", type=worker_counts, default=[1, 2, 4])
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--latency-rate", type=float, default=50.0, help="jobs enqueued per second")
    args = parser.parse_args(argv)
    if not args.database_url.startswith("postgresql"):
        parser.error("the queue bench needs PostgreSQL (LISTEN/NOTIFY, SKIP LOCKED)")
    if args.jobs < 1 or args.latency_jobs < 1 or args.latency_rate <= 0:
        parser.error("--jobs, --latency-jobs and --latency-rate must be positive")
    return args


def run(args: argparse.Namespace, url: str) -> int:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        print(machine_line(engine), flush=True)
        for line in LEGEND:
            print(line)
        throughputs = []
        for workers in args.workers:
            result = measure_throughput(engine, factory, url, workers=workers, jobs=args.jobs)
            throughputs.append(result)
            print(throughput_line(result), flush=True)
        for result in throughputs[1:]:
            print(scaling_line(result, throughputs[0]))
        latencies = []
        runs = [(poll_s, True) for poll_s in LATENCY_POLL_SECONDS] + [(1.0, False)]
        for poll_s, notify in runs:
            latency = measure_latency(
                engine,
                factory,
                url,
                poll_s=poll_s,
                notify=notify,
                jobs=args.latency_jobs,
                rate_per_s=args.latency_rate,
            )
            latencies.append(latency)
            print(latency_line(latency), flush=True)
    finally:
        engine.dispose()
    bad = sum(r.bad_jobs for r in throughputs) + sum(r.bad_jobs for r in latencies)
    print(f"queue.exactly_once {'ok' if bad == 0 else f'FAILED jobs={bad}'}")
    return 0 if bad == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the workers are stopped and the scratch database dropped.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        with scratch_database(args.database_url) as url:
            return run(args, url)
    except BenchError as exc:
        print(f"queue.error {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Prometheus metrics. Job figures are read from the jobs table at scrape time, so they are
right however many worker processes, on however many machines, ran the jobs."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from app.db.job import JobState
from app.jobs import repository as jobs_repository

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "edge_automl_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "edge_automl_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    registry=REGISTRY,
)

JOB_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class JobCollector(Collector):
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        with self.session_factory() as session:
            counts = jobs_repository.count_by_state(session)
            durations = jobs_repository.duration_histogram(session, buckets=JOB_DURATION_BUCKETS)
        depth = GaugeMetricFamily(
            "edge_automl_jobs", "Jobs in the queue by state.", labels=["state"]
        )
        for job_state in JobState:
            depth.add_metric([job_state.value], counts.get(job_state.value, 0))
        yield depth
        histogram = HistogramMetricFamily(
            "edge_automl_job_duration_seconds",
            "Run time of finished jobs (their last attempt), by kind and final state.",
            labels=["kind", "state"],
        )
        for kind, state, cumulative, total, seconds in durations:
            buckets = [(str(b), n) for b, n in zip(JOB_DURATION_BUCKETS, cumulative, strict=True)]
            buckets.append(("+Inf", total))
            histogram.add_metric([kind, state], buckets, seconds)
        yield histogram


def render(session_factory: sessionmaker[Session]) -> bytes:
    jobs = CollectorRegistry(auto_describe=False)
    jobs.register(JobCollector(session_factory))
    return generate_latest(REGISTRY) + generate_latest(jobs)

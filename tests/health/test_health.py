"""Liveness, readiness (database, schema head, blob store) and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.db.session import make_engine
from app.jobs import service as jobs_service
from app.jobs.registry import default_registry
from app.jobs.worker import Worker
from app.kit.blobs import open_blob_store
from app.main import create_app


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_check(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = {c["name"]: c for c in response.json()["checks"]}
    assert set(checks) == {"database", "migrations", "blobStore"}
    assert all(c["ok"] for c in checks.values())


def test_readyz_is_503_when_migrations_are_behind(settings, tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = {c["name"]: c for c in response.json()["checks"]}
    assert checks["database"]["ok"] is True
    assert checks["migrations"]["ok"] is False
    assert "db upgrade" in checks["migrations"]["detail"]


def test_readyz_is_503_when_blob_root_is_a_file(settings, engine, tmp_path: Path):
    root = tmp_path / "blobs"
    blobs = open_blob_store(f"file://{root}")
    (root / "_readyz").write_text("a file where the probe wants a folder")
    with TestClient(create_app(settings, engine=engine, blobs=blobs)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert {c["name"]: c["ok"] for c in response.json()["checks"]}["blobStore"] is False


def test_readyz_is_503_when_the_database_is_unreachable(settings, tmp_path: Path):
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"][0] == {
        "name": "database",
        "ok": False,
        "detail": "unreachable: OperationalError",
    }


def test_metrics_show_requests_queue_depth_and_job_durations(settings, client, session_factory):
    with session_factory.begin() as session:
        for _ in range(3):
            jobs_service.enqueue(session, kind="noop")
    worker = Worker(settings=settings, session_factory=session_factory, registry=default_registry())
    assert worker.run(max_jobs=2, stop_when_idle=True) == 2
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'edge_automl_jobs{state="QUEUED"} 1.0' in text
    assert 'edge_automl_jobs{state="SUCCEEDED"} 2.0' in text
    assert 'edge_automl_job_duration_seconds_count{kind="noop",state="SUCCEEDED"} 2.0' in text
    assert (
        'edge_automl_job_duration_seconds_bucket{kind="noop",le="+Inf",state="SUCCEEDED"} 2.0'
        in text
    )
    assert 'edge_automl_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "edge_automl_http_request_duration_seconds_bucket" in text

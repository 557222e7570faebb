"""Shared fixtures: real databases built by the Alembic migrations, the app, a client.

Every database test runs on SQLite, and on PostgreSQL too when TEST_DATABASE_URL is set.
Tests commit for real (workers in other processes must see the rows) and each test starts
from empty tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, load_settings
from app.db import Base, migrate
from app.db.session import make_engine, make_session_factory
from app.main import create_app

pytest_plugins = [
    "tests.fixtures.firebase_ml",
    "tests.fixtures.gcs",
    "tests.fixtures.server",
    "tests.fixtures.tflite",
    "tests.fixtures.vertex",
]


def _worker_database_url(url: str | None) -> str | None:
    """Under pytest-xdist each worker process gets its own PostgreSQL database (``test_gw0``
    ...), made on first use: tests reset the schema and delete every row, so two workers on
    one database would wipe each other's rows mid-test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if url is None or worker is None:
        return url
    base = make_url(url)
    name = f"{base.database}_{worker}"
    admin = make_engine(
        base.set(database="postgres").render_as_string(False), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(False)


TEST_DATABASE_URL = _worker_database_url(os.environ.get("TEST_DATABASE_URL"))
DATABASES = ["sqlite", "postgresql"] if TEST_DATABASE_URL else ["sqlite"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked postgres_only run only on the PostgreSQL parameter, when there is one."""
    if not TEST_DATABASE_URL:
        return  # they stay and run on SQLite, or skip where their fixture needs PostgreSQL
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_sqlite = callspec is not None and callspec.params.get("database_url") == "sqlite"
        (drop if on_sqlite and item.get_closest_marker("postgres_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def reset_postgres_schema(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session", params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    else:
        assert TEST_DATABASE_URL
        url = TEST_DATABASE_URL
        reset_postgres_schema(url)
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _delete_all_rows(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    _delete_all_rows(engine)
    yield make_session_factory(engine)
    _delete_all_rows(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        database_url=database_url,
        blob_url=f"file://{tmp_path / 'blobs'}",
        job_heartbeat_seconds=0.2,
        job_stall_timeout_seconds=1.0,
        job_retry_backoff_seconds=0.0,
        worker_poll_seconds=0.05,
        log_format="text",
    )


@pytest.fixture
def app(settings: Settings, engine: Engine, session_factory: sessionmaker[Session]) -> FastAPI:
    return create_app(settings, engine=engine)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent

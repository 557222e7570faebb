"""The schema comes only from Alembic: it migrates both ways and matches the ORM tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from app.db import Base, migrate
from app.db.session import make_engine
from tests.conftest import TEST_DATABASE_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database of each kind (a scratch PostgreSQL database when available)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    if not TEST_DATABASE_URL:
        pytest.skip("PostgreSQL is tested when TEST_DATABASE_URL is set")
    name = f"edge_automl_migrations_{uuid.uuid4().hex[:8]}"
    admin = make_engine(
        make_url(TEST_DATABASE_URL).set(database="postgres").render_as_string(False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(TEST_DATABASE_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(fresh_url):
    migrate.upgrade(fresh_url)
    assert tables(fresh_url) == set(Base.metadata.tables)
    migrate.downgrade(fresh_url, "base")
    assert tables(fresh_url) == set()
    migrate.upgrade(fresh_url)
    assert tables(fresh_url) == set(Base.metadata.tables)
    engine = make_engine(fresh_url)
    assert migrate.current_revision(engine) == migrate.head_revision(fresh_url)
    engine.dispose()


def test_models_and_migrations_do_not_drift(fresh_url):
    migrate.upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"the ORM tables and the migrations differ; add a migration: {diff}"


def test_one_head_and_no_create_all_in_the_app(repo_root):
    script_heads = migrate.head_revision("sqlite://")
    assert script_heads is not None
    offenders = [
        path for path in (repo_root / "app").rglob("*.py") if "create_all(" in path.read_text()
    ]
    assert offenders == []

"""Readiness checks: the database answers, its schema is at head, the blob store takes writes."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, text

from app.db import migrate
from app.kit.blobs import BlobStore

log = logging.getLogger(__name__)

PROBE_PREFIX = "_readyz/"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_database(engine: Engine, *, head: str | None) -> list[Check]:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return [Check("database", False, f"unreachable: {type(exc).__name__}")]
    current = migrate.current_revision(engine)
    schema_ok = current == head
    detail = f"at {current}" if schema_ok else f"at {current}, head is {head}: run db upgrade"
    return [Check("database", True, "reachable"), Check("migrations", schema_ok, detail)]


def check_blob_store(blobs: BlobStore) -> Check:
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        blobs.put(key, b"ok")
        blobs.delete(key)
    except Exception as exc:
        log.warning("health.blobs.unwritable", exc_info=True)
        return Check("blobStore", False, f"not writable: {type(exc).__name__}")
    return Check("blobStore", True, "writable")

"""Published models made as rows and blobs directly, the way publishing leaves them."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from app.db.model import Model
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.kit.ids import new_id


def tflite_bytes(version: int, size: int = 3000) -> bytes:
    """Distinct bytes per version (the service never parses them)."""
    seed = hashlib.sha256(f"version {version}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def add_model(sessions: sessionmaker[Session], *, name: str = "detector") -> str:
    now = utcnow()
    model_id = new_id()
    with sessions.begin() as session:
        session.add(
            Model(
                id=model_id,
                display_name=name,
                labels=["circle", "square"],
                model_type="MOBILE_TF_LOW_LATENCY_1",
                input_size=320,
                training_job_id=None,
                published_split=None,
                created_at=now,
                updated_at=now,
            )
        )
    return model_id


def add_version(
    sessions: sessionmaker[Session], blobs: BlobStore, model_id: str, version: int, data: bytes
) -> str:
    """A version with its TFLite file stored; returns the file's SHA-256."""
    sha256 = hashlib.sha256(data).hexdigest()
    key = f"models/{model_id}/versions/{version}/model.tflite"
    blobs.put(key, data)
    now = utcnow()
    with sessions.begin() as session:
        session.add(
            ModelVersion(
                id=new_id(),
                model_id=model_id,
                version=version,
                training_job_id=None,
                format="tflite",
                weights_blob_key=key,
                weights_sha256=sha256,
                weights_size_bytes=len(data),
                created_at=now,
            )
        )
        session.add(
            ModelArtifact(
                id=new_id(),
                model_id=model_id,
                model_version=version,
                format="tflite",
                blob_key=key,
                sha256=sha256,
                size_bytes=len(data),
                details={},
                created_at=now,
            )
        )
    return sha256


def publish(
    sessions: sessionmaker[Session],
    model_id: str,
    split: dict[str, int] | None,
    *,
    at: datetime | None = None,
) -> None:
    """Set the published split as publishing does (None: unpublished)."""
    with sessions.begin() as session:
        model = session.get(Model, model_id)
        assert model is not None
        model.published_split = split
        model.published_at = (at or utcnow()) if split is not None else None
        model.updated_at = utcnow()

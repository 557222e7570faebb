"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from app.batch_prediction.api import router as batch_prediction_router
from app.config import Settings, get_settings, open_settings_blob_store
from app.datasets.api import router as datasets_router
from app.db import migrate
from app.db.session import make_engine, make_read_session_factory, make_session_factory
from app.delivery.api import firebase_router as delivery_firebase_router
from app.delivery.api import router as delivery_router
from app.evaluation.api import router as evaluation_router
from app.health.api import router as health_router
from app.inference.api import router as inference_router
from app.jobs.api import router as operations_router
from app.kit.blobs import BlobStore
from app.registry.api import router as registry_router
from app.registry.firebase_api import router as firebase_ml_router
from app.training.api import router as training_router
from app.web.errors import install_error_handlers
from app.web.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.web.openapi import install_openapi, operation_id

API_TITLE = "edge-automl"
API_VERSION = "0.1.0"


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    blobs: BlobStore | None = None,
) -> FastAPI:
    """Build the app. Engine and blob store default to the settings; tests may pass their own."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Self-hosted AutoML Vision Edge: import labelled images, train on-device "
        "object detectors, evaluate, export to TFLite/ONNX, publish and serve them.",
        generate_unique_id_function=operation_id,
    )
    install_openapi(app)
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.read_session_factory = make_read_session_factory(engine)
    # The code's schema head cannot change while the process runs: read it once.
    app.state.schema_head = migrate.head_revision(settings.database_url)
    app.state.blobs = blobs or open_settings_blob_store(settings)

    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        max_json_bytes=settings.max_json_bytes,
    )
    app.add_middleware(RequestContextMiddleware)

    app.include_router(health_router)
    app.include_router(operations_router)
    app.include_router(datasets_router)
    app.include_router(training_router)
    app.include_router(delivery_router)  # before the registry: its colon route must win
    app.include_router(delivery_firebase_router)
    app.include_router(registry_router)
    app.include_router(firebase_ml_router)  # after delivery, as the registry
    app.include_router(evaluation_router)
    app.include_router(inference_router)
    app.include_router(batch_prediction_router)
    return app

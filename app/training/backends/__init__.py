"""Training backends: where a training job runs (here, Vertex AI AutoML, a Vertex custom job)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from app.config import Settings
from app.errors import InvalidInput
from app.training.backends.base import TrainingBackend

BACKEND_NAMES = ("local", "vertex-automl", "vertex-custom")


def _local(settings: Settings) -> TrainingBackend:
    from app.training.backends.local import LocalBackend

    return LocalBackend()


def _vertex_automl(settings: Settings) -> TrainingBackend:
    from app.training.backends.vertex_automl import VertexAutomlBackend

    return VertexAutomlBackend(settings)


def _vertex_custom(settings: Settings) -> TrainingBackend:
    # The module's contract: a class VertexCustomBackend(settings) implementing TrainingBackend.
    module = importlib.import_module("app.training.backends.vertex_custom")
    return cast(TrainingBackend, module.VertexCustomBackend(settings))


# Imported on first use: the Vertex client libraries load only where a job needs them.
FACTORIES: dict[str, Callable[[Settings], TrainingBackend]] = {
    "local": _local,
    "vertex-automl": _vertex_automl,
    "vertex-custom": _vertex_custom,
}


def get_backend(name: str, settings: Settings) -> TrainingBackend:
    """The backend a training job names, configured by ``settings``."""
    factory = FACTORIES.get(name)
    if factory is None:
        raise InvalidInput.field("backend", f"unknown backend {name!r}")
    return factory(settings)


def check_configured(name: str, settings: Settings) -> None:
    """Refuse a backend whose settings are missing, naming them (400)."""
    if name not in FACTORIES:
        raise InvalidInput.field(
            "backend", f"unknown backend {name!r}: one of {', '.join(BACKEND_NAMES)}"
        )
    missing = settings.missing_for_backend(name)
    if missing:
        raise InvalidInput.field(
            "backend", f"{name} is not configured on this service: set {', '.join(missing)}"
        )

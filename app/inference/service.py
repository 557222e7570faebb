"""Rules for serving: deploy a model version's ONNX file, predict with it, undeploy.

Which version is deployed is a row (every API replica reads it); the onnxruntime sessions are
this process's cache of those files, keyed by the file's SHA-256, loaded and warmed up on
first use and evicted least recently used beyond ``max_deployed_models``.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError
from sqlalchemy.orm import Session

from app.config import Settings
from app.datasets.images import over_limit
from app.db.deployment import Deployment
from app.errors import (
    Conflict,
    FailedPrecondition,
    InvalidInput,
    PayloadTooLarge,
    ResourceExhausted,
)
from app.inference import repository
from app.inference.schemas import Prediction, PredictParameters, PredictResponse
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow
from app.registry import service as registry_service

if TYPE_CHECKING:
    import torch

    from app.detector.export import OnnxPredictor
    from app.detector.types import Detections

ONNX = "onnx"

_loaded: OrderedDict[str, OnnxPredictor] = OrderedDict()
_loaded_lock = threading.Lock()


class FairTurns:
    """At most ``slots`` callers inside at once, let in in the order they came, and at most
    ``queue_limit`` waiting (more are refused at once). The CPU work of a prediction runs in
    its turn: threads racing for two cores would finish in no particular order, and the
    slowest answers would wait seconds under load (bench/predict.py)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = 0  # tickets handed out
        self._admitted = 0  # tickets let in, in order
        self._inside = 0

    @contextmanager
    def turn(self, *, slots: int, queue_limit: int) -> Iterator[None]:
        with self._changed:
            waiting, free = self._issued - self._admitted, slots - self._inside
            if waiting >= queue_limit + free:
                raise ResourceExhausted(
                    f"{waiting} predictions are already waiting for their turn (the limit is "
                    f"{queue_limit}); retry shortly"
                )
            ticket = self._issued
            self._issued += 1
            self._changed.wait_for(lambda: ticket == self._admitted and self._inside < slots)
            self._admitted += 1
            self._inside += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._inside -= 1
                self._changed.notify_all()


_turns = FairTurns()


def deployed_model_id(deployment: Deployment) -> str:
    return f"{deployment.model_id}-v{deployment.model_version}"


def _predictor(blobs: BlobStore, settings: Settings, deployment: Deployment) -> OnnxPredictor:
    """The deployment's session in this process, loaded and warmed up once."""
    key = deployment.artifact_sha256
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    # Imported here: the API process starts without torch and onnxruntime.
    import torch

    from app.detector.export import OnnxPredictor

    predictor = OnnxPredictor(
        blobs.get(deployment.artifact_blob_key), threads=settings.inference_threads
    )
    # The first run allocates and plans; a user's request should not pay for it.
    size = predictor.input_size
    predictor.predict([torch.zeros((3, size, size), dtype=torch.uint8)])
    with _loaded_lock:
        _loaded[key] = predictor
        while len(_loaded) > settings.max_deployed_models:
            _loaded.popitem(last=False)
    return predictor


def _forget(sha256: str) -> None:
    with _loaded_lock:
        _loaded.pop(sha256, None)


def deploy(
    session: Session, blobs: BlobStore, settings: Settings, *, model_id: str, version: int | None
) -> Deployment:
    """Serve a model version's ONNX file (exported first); loaded here at once."""
    found = registry_service.version_of(session, model_id=model_id, version=version)
    artifact = registry_service.file_of(session, found, ONNX)
    if artifact is None:
        raise FailedPrecondition(
            f"model {model_id!r} version {found.version} has no ONNX file to serve: export it "
            f'first (POST /v1/models/{model_id}:export {{"format": "onnx"}})'
        )
    deployment = repository.put(
        session,
        Deployment(
            model_id=model_id,
            model_version=found.version,
            artifact_blob_key=artifact.key,
            artifact_sha256=artifact.sha256,
            created_at=utcnow(),
        ),
    )
    _predictor(blobs, settings, deployment)
    return deployment


def undeploy(session: Session, *, model_id: str) -> Deployment:
    """Stop serving a model; FAILED_PRECONDITION when it is not deployed."""
    registry_service.get(session, model_id=model_id)
    deployment = repository.get(session, model_id)
    if deployment is None:
        raise FailedPrecondition(f"model {model_id!r} is not deployed")
    repository.remove(session, model_id)
    _forget(deployment.artifact_sha256)
    return deployment


def get_deployment(session: Session, *, model_id: str) -> Deployment | None:
    registry_service.get(session, model_id=model_id)
    return repository.get(session, model_id)


# -- predict -----------------------------------------------------------------------------


def decode_content(content: str, index: int) -> bytes:
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput.field(f"instances[{index}].content", "is not valid base64") from None


def image_input(data: bytes, size: int, settings: Settings, *, where: str) -> torch.Tensor:
    """The model's input for one image, or a 400/413 naming ``where`` (what the image is to
    the caller: a request field, a URI). Online and batch prediction both read images here."""
    if not data:
        raise InvalidInput.field(where, "is empty")
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(f"{where}: {over_limit(len(data), settings.max_image_bytes)}")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"{where}: the image has too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidInput.field(where, "is not an image (JPEG, PNG, WebP, GIF, BMP)") from None
    if width * height > settings.max_image_pixels:
        raise PayloadTooLarge(
            f"{where}: {width}x{height} pixels is over the {settings.max_image_pixels:,}-pixel "
            "limit"
        )
    from app.detector.data import model_input

    try:
        image, _ = model_input(data, size)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput.field(where, f"cannot be decoded: {exc}") from None
    return image


def prediction_of(
    found: Detections, labels: Sequence[str], parameters: PredictParameters
) -> Prediction:
    """One image's detections in Vertex's shape: those at or above the confidence threshold,
    at most ``maxPredictions``, boxes as ``[xMin, xMax, yMin, yMax]``."""
    keep = np.flatnonzero(found.scores >= parameters.confidence_threshold)
    keep = keep[: parameters.max_predictions]  # already highest first
    boxes = found.boxes[keep].astype(np.float64)
    return Prediction(
        ids=[str(int(label)) for label in found.labels[keep]],
        display_names=[labels[int(label)] for label in found.labels[keep]],
        confidences=[round(float(score), 6) for score in found.scores[keep]],
        bboxes=[[round(float(v), 6) for v in (box[0], box[2], box[1], box[3])] for box in boxes],
    )


def check_instance_count(images: Sequence[bytes], settings: Settings) -> None:
    if len(images) > settings.max_predict_instances:
        raise InvalidInput.field(
            "instances",
            f"{len(images)} images is over the {settings.max_predict_instances}-image limit",
        )


@dataclass(frozen=True)
class Serving:
    """What answers a model's predictions in this process: its deployment and loaded file."""

    deployment: Deployment
    predictor: OnnxPredictor


def serving(session: Session, blobs: BlobStore, settings: Settings, *, model_id: str) -> Serving:
    """The model's deployment, loaded; 409 when it is not deployed (or deployed now, when the
    operator enabled deploying on demand)."""
    deployment = get_deployment(session, model_id=model_id)
    if deployment is None:
        if not settings.predict_deploys_on_demand:
            raise Conflict(
                f"model {model_id!r} is not deployed: deploy it with "
                f"POST /v1/models/{model_id}:deploy, then predict"
            )
        deployment = deploy(session, blobs, settings, model_id=model_id, version=None)
    return Serving(deployment, _predictor(blobs, settings, deployment))


def predict_with(
    served: Serving,
    settings: Settings,
    *,
    images: Sequence[bytes],
    parameters: PredictParameters,
) -> PredictResponse:
    """Detections for each image, in Vertex's shape: the CPU work, in its turn, without the
    database. The caller has checked the instance count (before any database work)."""
    predictor = served.predictor
    with _turns.turn(slots=settings.predict_concurrency, queue_limit=settings.predict_queue_limit):
        inputs = [
            image_input(data, predictor.input_size, settings, where=f"instances[{i}].content")
            for i, data in enumerate(images)
        ]
        found = predictor.predict(inputs)
    predictions = [prediction_of(detections, predictor.labels, parameters) for detections in found]
    return PredictResponse(
        predictions=predictions,
        deployed_model_id=deployed_model_id(served.deployment),
        model_version=served.deployment.model_version,
    )


def predict(
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    *,
    model_id: str,
    images: Sequence[bytes],
    parameters: PredictParameters,
) -> PredictResponse:
    """Detections for each image, in Vertex's shape, from the deployed ONNX file."""
    check_instance_count(images, settings)
    served = serving(session, blobs, settings, model_id=model_id)
    return predict_with(served, settings, images=images, parameters=parameters)

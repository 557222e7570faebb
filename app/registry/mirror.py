"""The optional Firebase ML mirror: published models also published in Firebase ML, for apps
that still download from it (until it shuts down on June 15, 2027).

Publishing, unpublishing or deleting a model queues a ``registry.firebase_mirror`` job
(``request_sync``), in the same transaction. The job makes Firebase ML match the model as it
is *when the job runs*, so repeated jobs in any order converge:

- published: the published version's TFLite file is uploaded to
  ``gs://{bucket}/Firebase/ML/Models/{modelId}-v{version}.tflite`` and the Firebase model
  (same display name, tagged with our model id) is created, or its file replaced when its
  hash differs, and published;
- unpublished: the Firebase model, if there is one, is unpublished;
- deleted: the Firebase model, if there is one, is deleted.

Where the mirror stands is recorded on the model (``firebaseMirror``):
``PENDING`` (a job is queued or retrying; ``error`` holds the last transient failure),
``SYNCED`` (Firebase ML matched the model when the job finished) or ``FAILED`` (a permanent
failure, or the retries ran out; ``error`` says why; publishing again tries again).
Transient failures (5xx, UNAVAILABLE, timeouts, refused connections) raise ``Unavailable``
so the queue retries with backoff; permanent ones (INVALID_ARGUMENT, PERMISSION_DENIED,
NOT_FOUND...) fail the job. Neither touches the model's own publishing.

firebase-admin is imported only here, inside the job, through one named ``App`` per set of
mirror settings (never the default app, which the service's own code may own).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.job import Job
from app.errors import (
    AlreadyExists,
    AppError,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from app.jobs import service as jobs_service
from app.jobs.context import JobContext, JobInterrupted
from app.kit.clock import utcnow
from app.registry import repository, service

log = logging.getLogger(__name__)

MIRROR_KIND = "registry.firebase_mirror"
# With the queue's backoff (doubling, capped at an hour) this outlasts most of a day's outage.
MAX_ATTEMPTS = 25
# Where firebase-admin's own upload (TFLiteGCSModelSource.from_tflite_model_file) puts files.
BLOB_PREFIX = "Firebase/ML/Models/"
# Firebase ML checks a new file in an operation; the job waits for it this long at most.
OPERATION_WAIT_SECONDS = 120
# What firebase-admin accepts as a display name (narrower than our names) and as a tag.
FIREBASE_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
MIRROR_TAG = "edge-automl"
GOOGLE_BASE_URL = "https://firebaseml.googleapis.com"
# Rounds a job makes when the model changes under it, before it lets the queue retry.
MAX_ROUNDS = 3
# firebase-admin's error codes that retrying cannot fix, and the error each becomes here.
PERMANENT: dict[str, type[AppError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "FAILED_PRECONDITION": FailedPrecondition,
    "OUT_OF_RANGE": InvalidInput,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
}


class MirrorState(StrEnum):
    PENDING = "PENDING"
    SYNCED = "SYNCED"
    FAILED = "FAILED"


def request_sync(session: Session, *, model_id: str, settings: Settings) -> Job | None:
    """Queue a job that makes Firebase ML match the model as it will be (in the caller's
    transaction) and mark the mirror PENDING; nothing when the mirror is off.

    Call it before deleting a model: the job then knows the Firebase model it must delete."""
    if not settings.firebase_mirror_on:
        return None
    model = service.get(session, model_id=model_id)
    record = dict(model.firebase_mirror or {})
    payload: dict[str, Any] = {"modelId": model_id}
    if record.get("firebaseModel"):
        payload["firebaseModel"] = record["firebaseModel"]
    job = jobs_service.enqueue(
        session,
        kind=MIRROR_KIND,
        payload=payload,
        max_attempts=MAX_ATTEMPTS,
        description=f"mirror model {model_id} to Firebase ML",
    )
    # No resource_name: a mirror that retries for hours must not lock the model.
    _write(session, model_id, record, state=MirrorState.PENDING, error=None, attempts=0)
    return job


def _write(
    session: Session, model_id: str, record: dict[str, Any], **changes: Any
) -> dict[str, Any]:
    record = {
        "state": MirrorState.PENDING.value,
        "firebaseModel": None,
        "modelVersion": None,
        "modelHash": None,
        "published": False,
        "error": None,
        "attempts": 0,
        **record,
        **{k: v.value if isinstance(v, MirrorState) else v for k, v in changes.items()},
        "updateTime": utcnow().isoformat(),
    }
    repository.set_firebase_mirror(session, model_id, record)
    return record


# -- the job -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """What Firebase ML should hold for a model, as our database says now."""

    exists: bool
    display_name: str = ""
    published: bool = False
    version: int | None = None
    file_key: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class _Outcome:
    """What Firebase ML holds once a round is done."""

    firebase_model: str | None
    published: bool = False
    model_hash: str | None = None


def _target(session: Session, model_id: str, *, lock: bool = False) -> _Target:
    model = (
        repository.get_for_update(session, model_id) if lock else repository.get(session, model_id)
    )
    if model is None:
        return _Target(exists=False)
    number = service.main_published_version(model)
    if number is None:
        return _Target(exists=True, display_name=model.display_name)
    version = service.get_version(session, model_id=model_id, version=number)
    file = service.file_of(session, version, service.TFLITE) if version is not None else None
    if file is None:  # publishing requires the file; only a damaged database lacks it
        raise FailedPrecondition(f"version {number} of {model_id!r} has no TFLite file to mirror")
    return _Target(
        exists=True,
        display_name=model.display_name,
        published=True,
        version=number,
        file_key=file.key,
        sha256=file.sha256,
    )


def sync_firebase_mirror(ctx: JobContext) -> dict[str, Any]:
    """Make Firebase ML match the model as it is now, and record where the mirror stands."""
    model_id = ctx.payload["modelId"]
    known = ctx.payload.get("firebaseModel")
    try:
        if not ctx.settings.firebase_mirror_on:
            raise FailedPrecondition(
                "the Firebase ML mirror is off (EDGE_AUTOML_FIREBASE_MIRROR_PROJECT is unset)"
            )
        firebase = _FirebaseML.of(ctx.settings)
        for _ in range(MAX_ROUNDS):
            with ctx.transaction() as session:
                target = _target(session, model_id)
                record = _record_of(session, model_id)
            known = record.get("firebaseModel") or known
            ctx.checkpoint()
            outcome = firebase.converge(model_id, target, known, ctx)
            with ctx.transaction() as session:
                # Under the row's lock: a publish committed meanwhile waits, then marks the
                # mirror PENDING again for its own job, never the other way round.
                if _target(session, model_id, lock=True) == target:
                    if target.exists:
                        record = _record_of(session, model_id)
                        same_model = record.get("firebaseModel") == outcome.firebase_model
                        _write(
                            session,
                            model_id,
                            record,
                            state=MirrorState.SYNCED,
                            firebaseModel=outcome.firebase_model,
                            # Unpublished, Firebase keeps the file it had, of that version.
                            modelVersion=target.version
                            if target.published
                            else (
                                record.get("modelVersion")
                                if outcome.firebase_model and same_model
                                else None
                            ),
                            modelHash=outcome.model_hash,
                            published=outcome.published,
                            error=None,
                            attempts=ctx.attempt,
                        )
                    log.info(
                        "registry.mirror.synced",
                        extra={"model_id": model_id, "firebase_model": outcome.firebase_model},
                    )
                    return {
                        "modelId": model_id,
                        "firebaseModel": outcome.firebase_model,
                        "published": outcome.published,
                        "modelHash": outcome.model_hash,
                    }
            known = outcome.firebase_model or known  # the model changed: once more
        raise Unavailable("the model kept changing while it was mirrored; trying again")
    except JobInterrupted:
        raise
    except Exception as exc:
        error = _classify(exc)
        _record_failure(ctx, model_id, error or exc)
        if error is None:
            raise  # not a failure we know: the worker logs it as a crash and retries
        raise error from exc


def _read(ctx: JobContext, target: _Target) -> bytes:
    assert target.file_key is not None, "a published target names its file"
    return ctx.blobs.get(target.file_key)


def _record_of(session: Session, model_id: str) -> dict[str, Any]:
    model = repository.get(session, model_id)
    return dict(model.firebase_mirror or {}) if model is not None else {}


def _record_failure(ctx: JobContext, model_id: str, error: Exception) -> None:
    """Show the failure on the model: PENDING while the queue will retry, else FAILED."""
    if isinstance(error, AppError):
        retried = error.status_code >= 500
        status = {"code": error.rpc_code, "status": error.status, "message": error.message}
    else:
        retried = True
        status = {"code": 13, "status": "INTERNAL", "message": f"{type(error).__name__}: {error}"}
    final = not retried or ctx.last_attempt
    with ctx.transaction() as session:
        if repository.get(session, model_id) is None:
            return  # deleted: the job's own error is where this shows
        _write(
            session,
            model_id,
            _record_of(session, model_id),
            state=MirrorState.FAILED if final else MirrorState.PENDING,
            error=status,
            attempts=ctx.attempt,
        )
    log.warning(
        "registry.mirror.failed",
        extra={"model_id": model_id, "attempt": ctx.attempt, "final": final, "error": status},
    )


def _classify(exc: BaseException) -> AppError | None:
    """Our error for a failure on the way to Firebase ML: ``Unavailable`` (retried) when
    trying again may help, a 4xx one when it cannot; None for one we do not know."""
    import requests
    from firebase_admin import exceptions as firebase_exceptions
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, firebase_exceptions.FirebaseError):
        message = f"Firebase ML: {exc}"
        permanent = PERMANENT.get(exc.code)
        return permanent(message) if permanent else Unavailable(message)
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        message = f"Cloud Storage: {exc.message}"
        if exc.code is None or exc.code >= 500 or exc.code in (408, 429):
            return Unavailable(message)
        return {403: PermissionDenied, 404: NotFound, 401: Unauthenticated}.get(
            exc.code, FailedPrecondition
        )(message)
    if isinstance(exc, auth_exceptions.RefreshError):
        message = f"credentials refused: {exc}"
        return (
            Unavailable(message) if getattr(exc, "retryable", False) else Unauthenticated(message)
        )
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return FailedPrecondition(
            f"no credentials for Firebase ML: {exc}; set EDGE_AUTOML_FIREBASE_CREDENTIALS_FILE"
        )
    if isinstance(
        exc,
        auth_exceptions.TransportError | requests.ConnectionError | requests.Timeout | OSError,
    ):
        return Unavailable(f"cannot reach Google: {exc}")
    return None


# -- firebase-admin ------------------------------------------------------------------------


_SDK_LOCK = threading.Lock()


@contextmanager
def _quiet() -> Iterator[None]:
    """firebase-admin warns at every call that Firebase ML is deprecated; we know."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Firebase ML is deprecated", DeprecationWarning)
        yield


@functools.cache
def _waiting_ml_service() -> type:
    from firebase_admin import ml

    class WaitingMLService(ml._MLService):
        """firebase-admin 7.7 answers a create or update whose operation is not done yet by
        reading the model through the *default* app (``ml.get_model(model_id)``), which a
        named app does not have. This service waits for the operation instead (polling with
        the SDK's backoff), so every write returns the model as Firebase left it."""

        def handle_operation(
            self,
            operation: Any,
            wait_for_operation: bool = False,
            max_time_seconds: float | None = None,
        ) -> Any:
            return super().handle_operation(
                operation,
                wait_for_operation=True,
                max_time_seconds=max_time_seconds or OPERATION_WAIT_SECONDS,
            )

    return WaitingMLService


def _app_name(settings: Settings) -> str:
    key = repr(
        (
            settings.firebase_mirror_project,
            settings.firebase_mirror_bucket,
            str(settings.firebase_credentials_file),
            settings.firebase_ml_base_url,
        )
    )
    return f"edge-automl-mirror-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _firebase_app(settings: Settings) -> Any:
    """The named firebase-admin App of these settings, made on first use."""
    import firebase_admin
    from firebase_admin import _utils, credentials, ml

    name = _app_name(settings)
    with _SDK_LOCK:
        try:
            return firebase_admin.get_app(name)
        except ValueError:
            pass  # not made yet
        path = settings.firebase_credentials_file
        try:
            credential = (
                credentials.Certificate(str(path))
                if path is not None
                else credentials.ApplicationDefault()
            )
        except (ValueError, OSError) as exc:
            raise FailedPrecondition(
                f"EDGE_AUTOML_FIREBASE_CREDENTIALS_FILE ({path}) is not a service-account "
                f"key: {exc}"
            ) from None
        app = firebase_admin.initialize_app(
            credential,
            {
                "projectId": settings.firebase_mirror_project,
                "storageBucket": settings.firebase_mirror_bucket,
            },
            name=name,
        )
        # The one place the SDK's base URLs are set. An app's ML service reads them once,
        # when it is made, here; they are put back after, for any other app in the process.
        saved = ml._MLService.PROJECT_URL, ml._MLService.OPERATION_URL
        base = settings.firebase_ml_base_url or GOOGLE_BASE_URL
        try:
            ml._MLService.PROJECT_URL = f"{base}/v1beta2/projects/{{0}}/"
            ml._MLService.OPERATION_URL = f"{base}/v1beta2/"
            _utils.get_app_service(app, ml._ML_ATTRIBUTE, _waiting_ml_service())
        except BaseException:
            firebase_admin.delete_app(app)
            raise
        finally:
            ml._MLService.PROJECT_URL, ml._MLService.OPERATION_URL = saved
        return app


class _FirebaseML:
    """The calls the mirror makes, through firebase-admin's public functions."""

    def __init__(self, app: Any, bucket: str) -> None:
        self.app = app
        self.bucket = bucket

    @classmethod
    def of(cls, settings: Settings) -> _FirebaseML:
        assert settings.firebase_mirror_bucket is not None  # checked with the settings
        return cls(_firebase_app(settings), settings.firebase_mirror_bucket)

    def converge(
        self, model_id: str, target: _Target, known: str | None, ctx: JobContext
    ) -> _Outcome:
        """One pass making Firebase ML hold ``target``; each step may be repeated safely."""
        from firebase_admin import ml

        with _quiet():
            found = self._find(model_id, known, target.display_name if target.published else None)
            if found is not None:  # Firebase refuses writes to a model an operation locks
                found.wait_for_unlocked(max_time_seconds=OPERATION_WAIT_SECONDS)
            ctx.checkpoint()
            if not target.exists:
                if found is not None:
                    ml.delete_model(found.model_id, app=self.app)
                return _Outcome(firebase_model=None)
            if not target.published:
                if found is not None and found.published:
                    found = ml.unpublish_model(found.model_id, app=self.app)
                return self._outcome(found)
            if not FIREBASE_NAME.fullmatch(target.display_name):
                raise FailedPrecondition(
                    f"display name {target.display_name!r} cannot be used in Firebase ML, "
                    "which allows 1-32 letters, digits, _ and -; rename the model and "
                    "publish it again"
                )
            found = self._with_file(model_id, target, found, read=lambda: _read(ctx, target))
            ctx.checkpoint()
            if found.validation_error:
                raise FailedPrecondition(
                    f"Firebase ML refused the file of version {target.version}: "
                    f"{found.validation_error}"
                )
            if not found.published:
                found = ml.publish_model(found.model_id, app=self.app)
            return self._outcome(found)

    def _find(self, model_id: str, known: str | None, display_name: str | None) -> Any:
        """The Firebase model mirroring ours: the one recorded, else the one tagged with our
        id, else (when publishing) the one apps download by our display name."""
        from firebase_admin import exceptions, ml

        if known:
            try:
                return ml.get_model(known.rsplit("/", 1)[-1], app=self.app)
            except exceptions.NotFoundError:
                pass  # deleted in the console: look again
        filters = [f"tags: {model_id}"] if FIREBASE_NAME.fullmatch(model_id) else []
        if display_name is not None:
            filters.append(f"display_name = {display_name}")
        for list_filter in filters:
            page = ml.list_models(list_filter=list_filter, page_size=1, app=self.app)
            if page.models:
                return page.models[0]
        return None

    def _with_file(
        self, model_id: str, target: _Target, found: Any, *, read: Callable[[], bytes]
    ) -> Any:
        """The Firebase model holding the target's file, its display name and our tags:
        created, or updated where it differs."""
        from firebase_admin import ml

        gcs_uri = f"gs://{self.bucket}/{BLOB_PREFIX}{model_id}-v{target.version}.tflite"
        if found is None:
            return ml.create_model(
                ml.Model(
                    display_name=target.display_name,
                    tags=self._tags(model_id, []),
                    model_format=ml.TFLiteFormat(model_source=self._upload(model_id, target, read)),
                ),
                app=self.app,
            )
        source = found.model_format.model_source if found.model_format else None
        # Files never change under one version's name, so either sign says it is ours.
        file_current = found.model_hash == target.sha256 or (
            source is not None and source.gcs_tflite_uri == gcs_uri
        )
        tags = self._tags(model_id, found.tags or [])
        if file_current and found.display_name == target.display_name and tags == found.tags:
            return found
        found.display_name = target.display_name
        found.tags = tags
        # An update sends the file's URL signed again, so the source must know our app even
        # where the file stays (the SDK's own would sign through the default app).
        found.model_format = ml.TFLiteFormat(
            model_source=ml.TFLiteGCSModelSource(source.gcs_tflite_uri, app=self.app)
            if file_current and source is not None
            else self._upload(model_id, target, read)
        )
        return ml.update_model(found, app=self.app)

    def _upload(self, model_id: str, target: _Target, read: Callable[[], bytes]) -> Any:
        """Upload the file with firebase-admin's own upload, to Firebase/ML/Models/ in the
        bucket; the source it returns is signed for Firebase ML when sent."""
        from firebase_admin import ml

        with tempfile.TemporaryDirectory(prefix="firebase-mirror-") as folder:
            path = Path(folder) / f"{model_id}-v{target.version}.tflite"
            path.write_bytes(read())
            return ml.TFLiteGCSModelSource.from_tflite_model_file(
                str(path), bucket_name=self.bucket, app=self.app
            )

    @staticmethod
    def _tags(model_id: str, tags: list[str]) -> list[str]:
        ours = [MIRROR_TAG] + ([model_id] if FIREBASE_NAME.fullmatch(model_id) else [])
        return [*tags, *(t for t in ours if t not in tags)]

    def _outcome(self, found: Any) -> _Outcome:
        if found is None:
            return _Outcome(firebase_model=None)
        return _Outcome(
            firebase_model=f"projects/{self.app.project_id}/models/{found.model_id}",
            published=found.published,
            model_hash=found.model_hash,
        )

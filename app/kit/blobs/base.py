"""The blob store contract both backends keep, and the one key validator they share.

A key is a ``/``-separated relative path such as ``datasets/ds1/images/cat.jpg``. Both
backends accept exactly the same keys, so moving from a local folder to Cloud Storage is a
configuration change and never a data migration problem.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from app.errors import FailedPrecondition, InvalidInput, NotFound

# Names the local backend uses for its own temp files and content-type sidecars. Keys may not
# use them on either backend, so a key never collides with (or is hidden as) an internal file.
RESERVED_SEGMENT_PREFIX = ".~blob."
MAX_KEY_BYTES = 1024  # Cloud Storage's limit on an object name
MAX_SEGMENT_BYTES = 255  # the file-name limit of common file systems


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    content_type: str | None
    updated: datetime | None  # UTC-aware


class BlobNotFound(NotFound):
    """No blob is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"blob {key!r} not found")
        self.key = key


class SigningNotConfigured(FailedPrecondition):
    """A signed download URL was asked for, but no signing key is configured."""


class BlobStore(ABC):
    """Bytes under ``/``-separated keys, in a local folder or a Cloud Storage bucket."""

    url: str  # the URL the store was opened from

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        content_type: str | None = None,
        durable: bool = True,
    ) -> BlobInfo:
        """Store ``data`` under ``key``, replacing any blob there; readers never see a part.

        ``durable=False`` skips waiting for the disk; call :meth:`sync` before recording
        the key anywhere that must survive a crash (bulk imports write thousands at once).
        """

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if no blob is there; True when this call stored it.

        Atomic: of several callers racing on one key, exactly one stores its bytes and every
        caller then reads those. No content type is kept.
        """

    @abstractmethod
    def sync(self) -> None:
        """Make every earlier ``durable=False`` write durable (a no-op where all writes are)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole blob; use :meth:`open` for large ones."""

    @abstractmethod
    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streaming binary reader; raises :class:`BlobNotFound` at once if the key is missing."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def stat(self, key: str) -> BlobInfo: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; removing a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Blobs whose key starts with ``prefix`` (a plain string prefix), sorted by key."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the blob lives, as a URI other tools read: ``gs://bucket/...`` or ``file://...``."""

    @abstractmethod
    def download_url(self, key: str, *, expires_in: timedelta) -> str | None:
        """A URL a client can fetch the blob from, or None: the API streams the bytes itself."""


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid blob key, or None when it is."""
    if not key:
        return "must not be empty"
    if key.startswith("/"):
        return "must be relative (no leading '/')"
    for char, name in (("\\", "a backslash"), ("\0", "NUL"), ("\r", "CR"), ("\n", "LF")):
        if char in key:
            return f"must not contain {name}"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"must be at most {MAX_KEY_BYTES} bytes"
    for segment in key.split("/"):
        if not segment:
            return "must not contain empty segments"
        if segment in (".", ".."):
            return "must not contain '.' or '..' segments"
        if segment.startswith(RESERVED_SEGMENT_PREFIX):
            return f"segments starting with {RESERVED_SEGMENT_PREFIX!r} are reserved"
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            return f"segments must be at most {MAX_SEGMENT_BYTES} bytes"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` unchanged, or raise :class:`InvalidInput` saying what is wrong with it."""
    problem = key_problem(key)
    if problem is not None:
        raise InvalidInput(f"invalid blob key {key!r}: {problem}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, a whole key, or the start of one (``images/``, ``images/ca``)."""
    # A prefix is valid when some valid key starts with it; appending one letter finds one.
    problem = key_problem(prefix + "x") if prefix else None
    if problem is not None:
        raise InvalidInput(f"invalid blob prefix {prefix!r}: {problem}")
    return prefix


def open_blob_store(
    url: str,
    *,
    gcs_signing_credentials_file: str | os.PathLike[str] | None = None,
    gcs_project: str | None = None,
) -> BlobStore:
    """Open the store ``url`` names; anything but the forms below raises ValueError.

    ``file:///abs/path``, ``file://./rel/path``, ``gs://bucket`` or ``gs://bucket/prefix``.
    A relative folder is resolved against the working directory now, and created if missing.
    The Google client libraries are only imported for a ``gs://`` URL.
    """
    if url.startswith("file://"):
        from app.kit.blobs.local import LocalBlobStore

        return LocalBlobStore.from_url(url)
    if url.startswith("gs://"):
        from app.kit.blobs.gcs import GcsBlobStore

        return GcsBlobStore.from_url(
            url, signing_credentials_file=gcs_signing_credentials_file, project=gcs_project
        )
    raise ValueError(
        f"unsupported blob URL {url!r}: use file:///absolute/path, file://./relative/path, "
        "gs://bucket or gs://bucket/prefix"
    )

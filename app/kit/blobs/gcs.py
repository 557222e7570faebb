"""Blobs as Cloud Storage objects: key ``k`` is the object ``PREFIX/k`` in one bucket.

Objects only become visible once an upload completes, which gives the same "old bytes or new
bytes, never a part" promise as the local store. Large uploads go as resumable uploads in
chunks, so memory use stays at one chunk whatever the size.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import suppress
from datetime import timedelta
from typing import Any, BinaryIO, cast
from urllib.parse import unquote, urlsplit

import google.cloud.storage as storage
from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials
from google.oauth2 import service_account

from app.kit.blobs.base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    SigningNotConfigured,
    key_problem,
    validate_key,
    validate_prefix,
)

# A multiple of 256 KiB, as resumable uploads require; one chunk is held in memory at a time.
CHUNK_SIZE = 8 * 1024 * 1024
SIGNING_SETTING = "EDGE_AUTOML_GCS_SIGNING_CREDENTIALS_FILE"
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
STORAGE_HOST = "storage.googleapis.com"


class GcsBlobStore(BlobStore):
    """Blobs in a Cloud Storage bucket, optionally under a prefix."""

    def __init__(
        self,
        *,
        url: str,
        client: storage.Client,
        bucket: str,
        prefix: str = "",
        signing_credentials: service_account.Credentials | None = None,
    ) -> None:
        self.url = url
        self.client = client
        self.bucket = client.bucket(bucket)
        self.prefix = prefix
        self._signing_credentials = signing_credentials

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        signing_credentials_file: str | os.PathLike[str] | None = None,
        project: str | None = None,
    ) -> GcsBlobStore:
        """Open ``gs://bucket`` or ``gs://bucket/prefix``; no request is made yet."""
        bucket, _, prefix = url.removeprefix("gs://").partition("/")
        prefix = prefix.rstrip("/")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(f"invalid blob URL {url!r}: {bucket!r} is not a bucket name")
        problem = key_problem(prefix) if prefix else None
        if problem is not None:
            raise ValueError(f"invalid blob URL {url!r}: the prefix {problem}")
        signing = None
        if signing_credentials_file is not None:
            try:
                signing = service_account.Credentials.from_service_account_file(
                    os.fspath(signing_credentials_file)
                )
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"{SIGNING_SETTING}: cannot load a service-account key from "
                    f"{os.fspath(signing_credentials_file)!r}: {exc}"
                ) from exc
        return cls(
            url=url,
            client=make_client(project),
            bucket=bucket,
            prefix=prefix,
            signing_credentials=signing,
        )

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        content_type: str | None = None,
        durable: bool = True,
    ) -> BlobInfo:
        # An upload is durable once it completes: ``durable`` changes nothing here.
        blob = self._blob(key, chunk_size=CHUNK_SIZE)
        if isinstance(data, bytes | bytearray | memoryview):
            # Up to 8 MiB goes in one multipart request, anything larger resumably.
            blob.upload_from_file(io.BytesIO(data), size=len(data), content_type=content_type)
        else:
            # Size unknown: a resumable upload, one chunk in memory at a time.
            blob.upload_from_file(_FromHere(data), content_type=content_type)
        return self._info(key, blob)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        blob = self._blob(key)
        # Generation 0 means "no live object": Cloud Storage makes the check and the write one
        # step. Looking first keeps the answer right on emulators that ignore preconditions
        # (gcp-storage-emulator does), where only a true race could still overwrite.
        if blob.exists():
            return False
        try:
            blob.upload_from_string(data, if_generation_match=0)
        except google_exceptions.PreconditionFailed:
            return False
        return True

    def get(self, key: str) -> bytes:
        try:
            return cast(bytes, self._blob(key).download_as_bytes())
        except google_exceptions.NotFound:
            raise BlobNotFound(key) from None

    def open(self, key: str) -> BinaryIO:
        # get_blob fetches the generation, so every chunk read comes from that one version.
        blob = self.bucket.get_blob(self._name(key))
        if blob is None:
            raise BlobNotFound(key)
        return cast(BinaryIO, blob.open("rb", chunk_size=CHUNK_SIZE))

    def exists(self, key: str) -> bool:
        return bool(self._blob(key).exists())

    def stat(self, key: str) -> BlobInfo:
        blob = self.bucket.get_blob(self._name(key))
        if blob is None:
            raise BlobNotFound(key)
        return self._info(key, blob)

    def delete(self, key: str) -> None:
        with suppress(google_exceptions.NotFound):
            self._blob(key).delete()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        validate_prefix(prefix)  # now, not when the caller starts iterating
        return self._iterate(prefix)

    def _iterate(self, prefix: str) -> Iterator[BlobInfo]:
        start = f"{self.prefix}/" if self.prefix else ""
        # Cloud Storage lists names in byte order, which is key order.
        for blob in self.client.list_blobs(self.bucket, prefix=start + prefix):
            key = blob.name[len(start) :]
            # Skip "folder/" placeholders that consoles create: no key can name them.
            if key_problem(key) is None:
                yield self._info(key, blob)

    def sync(self) -> None:
        """Nothing to do: every completed upload is already durable."""

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self._name(key)}"

    def download_url(self, key: str, *, expires_in: timedelta) -> str | None:
        """A V4 signed GET URL, made locally with the configured service-account key."""
        blob = self._blob(key)
        if self._signing_credentials is None:
            raise SigningNotConfigured(
                f"signed download URLs need a service-account key: set {SIGNING_SETTING}"
            )
        return cast(
            str,
            blob.generate_signed_url(
                version="v4",
                expiration=expires_in,
                method="GET",
                credentials=self._signing_credentials,
            ),
        )

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _blob(self, key: str, *, chunk_size: int | None = None) -> storage.Blob:
        # Only uploads set a chunk size: on downloads it would turn off checksum validation.
        return self.bucket.blob(self._name(key), chunk_size=chunk_size)

    @staticmethod
    def _info(key: str, blob: Any) -> BlobInfo:
        return BlobInfo(
            key=key, size=int(blob.size), content_type=blob.content_type, updated=blob.updated
        )


def make_client(project: str | None = None) -> storage.Client:
    """A storage client: anonymous against the emulator, default credentials otherwise."""
    # google-cloud-storage itself reads this variable to find the emulator; we follow it.
    if os.environ.get(EMULATOR_VARIABLE):
        # Building it from real credentials here would hang on Google's token server.
        return storage.Client(credentials=AnonymousCredentials(), project=project)
    return storage.Client(project=project)


def object_of_url(url: str) -> tuple[str, str] | None:
    """The bucket and object name a Cloud Storage URL names (a signed URL, say), or None when
    the URL is not Cloud Storage's: https on storage.googleapis.com, path style
    (``/bucket/object``) or virtual-hosted (``bucket.storage.googleapis.com/object``), or on
    the emulator ``STORAGE_EMULATOR_HOST`` names, path style. The query (a signature) is not
    checked: the caller reads the object with its own access, never by fetching the URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    path_style = parts.scheme == "https" and parts.netloc == STORAGE_HOST
    if emulator := os.environ.get(EMULATOR_VARIABLE):
        at = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
        path_style = path_style or (parts.scheme, parts.netloc) == (at.scheme, at.netloc)
    path = unquote(parts.path)
    if path_style:
        bucket, _, name = path.removeprefix("/").partition("/")
    elif parts.scheme == "https" and parts.netloc.endswith(f".{STORAGE_HOST}"):
        bucket, name = parts.netloc.removesuffix(f".{STORAGE_HOST}"), path.removeprefix("/")
    else:
        return None
    if not _BUCKET_NAME.fullmatch(bucket) or not name or name.endswith("/"):
        return None
    return bucket, name


class _FromHere(io.RawIOBase):
    """The caller's stream, positioned at 0 where it now stands.

    The upload library insists the stream starts at position 0 and uses tell() to track its
    progress; a stream that was read from before, or cannot tell at all (a pipe, a request
    body), would otherwise be refused. Rewinding for a retried chunk needs a seekable stream.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._position = 0
        try:
            self._base: int | None = stream.tell() if stream.seekable() else None
        except (OSError, AttributeError):
            self._base = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        # A short read tells the uploader the stream has ended, so fill the request unless
        # the source really is at its end (a pipe or socket may return less at a time).
        if size is None or size < 0:
            chunk = self._stream.read()
        else:
            parts = []
            remaining = size
            while remaining > 0 and (part := self._stream.read(remaining)):
                parts.append(part)
                remaining -= len(part)
            chunk = b"".join(parts)
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return self._base is not None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and offset == self._position:
            return offset
        if self._base is None or whence != io.SEEK_SET:
            raise io.UnsupportedOperation("the source stream cannot seek")
        self._stream.seek(self._base + offset)
        self._position = offset
        return offset

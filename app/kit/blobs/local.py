"""Blobs as files under one root folder, the embedded mode's store.

A key ``a/b.jpg`` is the file ``ROOT/a/b.jpg``, so the folder stays readable by people and
tools. Writes go to a temp file in the destination folder and are renamed into place, so a
reader sees the old bytes or the new ones, never a part. A content type, when given, is kept
in a small JSON sidecar next to the file. Temp files and sidecars have names starting with
:data:`RESERVED_SEGMENT_PREFIX`, which no key may use, and are never listed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO
from urllib.parse import unquote

from app.errors import Conflict
from app.kit.blobs.base import (
    RESERVED_SEGMENT_PREFIX,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    key_problem,
    validate_key,
    validate_prefix,
)

CHUNK_SIZE = 1024 * 1024
TEMP_PREFIX = f"{RESERVED_SEGMENT_PREFIX}tmp."
SIDECAR_PREFIX = f"{RESERVED_SEGMENT_PREFIX}meta."
# What opening a missing key raises, depending on which part of its path is missing or a file.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class LocalBlobStore(BlobStore):
    """Blobs in a local folder, created if missing."""

    def __init__(self, root: Path, *, url: str | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = url if url is not None else self.root.as_uri()

    @classmethod
    def from_url(cls, url: str) -> LocalBlobStore:
        """Open ``file:///absolute/path`` or ``file://./relative/path`` (from the cwd)."""
        rest = url.removeprefix("file://")
        if rest.startswith("/"):
            return cls(Path(unquote(rest)), url=url)
        if rest == "." or rest.startswith("./"):
            return cls(Path.cwd() / unquote(rest), url=url)
        raise ValueError(
            f"unsupported blob URL {url!r}: use file:///absolute/path or file://./relative/path"
        )

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        content_type: str | None = None,
        durable: bool = True,
    ) -> BlobInfo:
        path = self._path(key)
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(f"blob key {key!r} passes through an existing blob") from None
        temp, written = _write_temp(folder, data, durable=durable)
        try:
            # The sidecar goes first, so a new key never shows up without its content type.
            sidecar = _sidecar_path(path)
            if content_type is None:
                sidecar.unlink(missing_ok=True)
            else:
                meta = json.dumps({"key": key, "content_type": content_type}).encode()
                _replace(_write_temp(folder, meta)[0], sidecar)
        except BaseException:
            os.unlink(temp)
            raise
        try:
            _replace(temp, path)
        except IsADirectoryError:
            raise Conflict(f"blob key {key!r} is a folder of other blobs") from None
        if durable:
            _fsync_folder(folder)
        return BlobInfo(
            key=key,
            size=written.st_size,
            content_type=content_type,
            updated=datetime.fromtimestamp(written.st_mtime, UTC),
        )

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(f"blob key {key!r} passes through an existing blob") from None
        temp, _ = _write_temp(folder, data)
        try:
            # A hard link, unlike a rename, fails when the target exists: the atomic check.
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        _fsync_folder(folder)
        return True

    def sync(self) -> None:
        # One file-system-wide flush costs about what a single fsync does, instead of two
        # fsyncs (file and folder) per blob.
        fd = os.open(self.root, os.O_RDONLY)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except _MISSING:
            raise BlobNotFound(key) from None

    def open(self, key: str) -> BinaryIO:
        # A file is its own context manager; opening it now reports a missing key at once.
        try:
            return self._path(key).open("rb")
        except _MISSING:
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> BlobInfo:
        path = self._path(key)
        try:
            result = path.stat()
        except _MISSING:
            raise BlobNotFound(key) from None
        if not S_ISREG(result.st_mode):
            raise BlobNotFound(key)
        return _info(key, result, _read_content_type(_sidecar_path(path)))

    def delete(self, key: str) -> None:
        path = self._path(key)
        # A folder at the key holds other blobs and is not itself a blob: nothing to delete.
        with suppress(*_MISSING):
            path.unlink()
        with suppress(*_MISSING):
            _sidecar_path(path).unlink()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        validate_prefix(prefix)
        folder, _, partial = prefix.rpartition("/")
        start = self._path(folder) if folder else self.root
        return self._walk(start, f"{folder}/" if folder else "", partial)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def download_url(self, key: str, *, expires_in: timedelta) -> str | None:
        validate_key(key)
        return None

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _walk(self, folder: Path, base: str, partial: str = "") -> Iterator[BlobInfo]:
        try:
            entries = [*os.scandir(folder)]
        except _MISSING:
            return
        sidecars = {e.name for e in entries if e.name.startswith(SIDECAR_PREFIX)}
        # Sorting a folder "name" as "name/" puts it where its keys fall in key order.
        named = sorted(
            (entry.name + "/" if entry.is_dir() else entry.name, entry)
            for entry in entries
            if entry.name.startswith(partial) and not entry.name.startswith(RESERVED_SEGMENT_PREFIX)
        )
        for sort_name, entry in named:
            key = base + sort_name
            if sort_name.endswith("/"):
                yield from self._walk(Path(entry.path), key)
                continue
            if key_problem(key) is not None:
                continue  # a file put there by hand that no key can name
            try:
                result = entry.stat()
            except FileNotFoundError:
                continue  # deleted while we listed
            sidecar_name = _sidecar_name(entry.name)
            content_type = (
                _read_content_type(folder / sidecar_name) if sidecar_name in sidecars else None
            )
            yield _info(key, result, content_type)


def _write_temp(
    folder: Path, data: bytes | BinaryIO, *, durable: bool = True
) -> tuple[str, os.stat_result]:
    """Write ``data`` (durably) to a new temp file in ``folder``; on any failure, remove it."""
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, bytes | bytearray | memoryview):
                out.write(data)
            else:
                while chunk := data.read(CHUNK_SIZE):
                    out.write(chunk)
            out.flush()
            if durable:
                os.fsync(out.fileno())
            return temp, os.fstat(out.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _syncfs(fd: int) -> None:
    """Flush the file system holding ``fd`` (Linux syncfs), or all of them elsewhere."""
    libc_name = ctypes.util.find_library("c")
    syncfs = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if syncfs is None or syncfs(fd) != 0:
        os.sync()


def _replace(temp: str, target: Path) -> None:
    """Rename ``temp`` over ``target``; if that fails, remove ``temp``."""
    try:
        os.replace(temp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable: a rename lives in the folder's own data."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sidecar_name(name: str) -> str:
    # Hashed so the sidecar's name fits the file-name limit whatever the blob's name length.
    return SIDECAR_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:32]


def _sidecar_path(path: Path) -> Path:
    return path.with_name(_sidecar_name(path.name))


def _read_content_type(sidecar: Path) -> str | None:
    try:
        meta = json.loads(sidecar.read_bytes())
    except FileNotFoundError:
        return None
    content_type = meta.get("content_type")
    return content_type if isinstance(content_type, str) else None


def _info(key: str, result: os.stat_result, content_type: str | None) -> BlobInfo:
    return BlobInfo(
        key=key,
        size=result.st_size,
        content_type=content_type,
        updated=datetime.fromtimestamp(result.st_mtime, UTC),
    )

"""Read index files and images from where users keep them, refusing what is not safe to read.

A reference in an index file is either absolute (``gs://``, ``https://``, a local path or a
``file://`` URI) or a path relative to a :class:`Location`: an uploaded zip archive, or the
folder of the index file itself. :func:`fetch` applies the operator's :class:`FetchPolicy` to
absolute references; a location only ever reads inside itself.

Every failure is a :class:`SourceError` whose message names what was read and why it failed,
fit to show the user in a per-row import report.
"""

from __future__ import annotations

import copy
import http.client
import io
import ipaddress
import os
import socket
import ssl
import stat
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import quote, unquote, urlsplit

from app.datasets.images import over_limit
from app.errors import InvalidInput
from app.kit.blobs import BlobNotFound, BlobStore, open_blob_store

if TYPE_CHECKING:
    from app.config import Settings

INDEX_SUFFIXES = (".csv", ".jsonl")
COPY_CHUNK = 1024 * 1024
# Zip bomb guard: a member may not inflate more than this, once it is big enough to matter.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_FROM_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0
USER_AGENT = "edge-automl-import"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64 addresses carry an IPv4 address in their last 32 bits; that one is checked too.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError)
_HTTP_ERRORS = (OSError, http.client.HTTPException)
# Characters a relative reference keeps as they are when it becomes part of an https URL.
_URL_SAFE = "!$&'()*+,;=:@%~"


class SourceError(Exception):
    """A file could not be read; ``str()`` names it and says why, for the user."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    """Where the operator lets imports read from, beyond uploaded archives."""

    max_bytes: int  # the size limit of a fetch that names none of its own
    # Local paths and file:// URIs are readable only inside this folder; None: none are.
    import_root: Path | None = None
    allow_https: bool = False
    # Lets https reach loopback and private addresses. Only for tests against a local server.
    allow_private_https: bool = False
    # PEM file of the CA certificates to trust instead of the system's; None: the system's.
    https_cafile: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def of(cls, settings: Settings) -> FetchPolicy:
        """The operator's policy (``IMPORT_ROOT``, ``IMPORT_ALLOW_HTTPS``), for dataset imports
        and batch prediction alike; a fetch is capped at the image size limit unless it names
        its own."""
        return cls(
            import_root=settings.import_root,
            allow_https=settings.import_allow_https,
            max_bytes=settings.max_image_bytes,
        )


class Location(ABC):
    """A place whose files relative references in an index file name."""

    @abstractmethod
    def copy(self, ref: str, out: BinaryIO, *, max_bytes: int) -> int:
        """Stream the file at ``ref`` (relative to this location) into ``out``; its size."""

    def read(self, ref: str, *, max_bytes: int) -> bytes:
        """The file at ``ref``, a ``/``-separated path relative to this location."""
        out = io.BytesIO()
        self.copy(ref, out, max_bytes=max_bytes)
        return out.getvalue()

    @abstractmethod
    def describe(self) -> str:
        """How the location is named to the user, e.g. ``gs://bucket/folder/``."""


def fetch(
    ref: str, *, base: Location | None = None, policy: FetchPolicy, max_bytes: int | None = None
) -> bytes:
    """The bytes ``ref`` names: an absolute URI or path, or a path relative to ``base``.

    ``max_bytes`` defaults to the policy's. Raises SourceError with a reason for the user.
    """
    out = io.BytesIO()
    fetch_to(ref, out, base=base, policy=policy, max_bytes=max_bytes)
    return out.getvalue()


def fetch_to(
    ref: str,
    out: BinaryIO,
    *,
    base: Location | None = None,
    policy: FetchPolicy,
    max_bytes: int | None = None,
) -> int:
    """Like :func:`fetch`, streaming into ``out`` (for archives too large to hold in memory).

    Returns the number of bytes written. After a SourceError, ``out`` may hold a part.
    """
    limit = policy.max_bytes if max_bytes is None else max_bytes
    if not ref:
        raise SourceError("''", "empty path")
    scheme = _scheme(ref)
    if scheme == "gs":
        bucket, key = _split_gs(ref)
        return _copy_blob(_bucket_store(bucket, ref), key, out, ref, max_bytes=limit)
    if scheme == "https":
        return _copy_https(ref, out, policy=policy, max_bytes=limit)
    if scheme == "file" or ref.startswith("/"):
        return _copy_file(_local_path(ref, policy), out, ref, max_bytes=limit)
    if scheme == "http":
        raise SourceError(ref, "plain http:// is not allowed; use https://")
    if len(scheme) == 1 or "\\" in ref:
        raise SourceError(ref, "Windows paths are not supported; use '/' separators")
    if scheme:
        raise SourceError(
            ref, f"unsupported scheme {scheme}: (use gs://, https:// or a relative path)"
        )
    if base is None:
        raise SourceError(ref, "a relative path needs an archive or an index file it is beside")
    return base.copy(ref, out, max_bytes=limit)


def check_absolute(ref: str, *, policy: FetchPolicy) -> None:
    """Raise SourceError where :func:`fetch` would refuse the absolute reference ``ref``
    whatever the file holds (its form, the scheme, the policy, the import root), so that a
    list of references can be checked before any is read. Whether the file is there is
    known only by reading it."""
    if not ref:
        raise SourceError("''", "empty path")
    scheme = _scheme(ref)
    if scheme == "gs":
        _split_gs(ref)
    elif scheme == "https":
        if not policy.allow_https:
            raise SourceError(ref, "https:// sources are not allowed on this server")
    elif scheme == "file" or ref.startswith("/"):
        _local_path(ref, policy)
    elif scheme == "http":
        raise SourceError(ref, "plain http:// is not allowed; use https://")
    elif len(scheme) == 1 or "\\" in ref:
        raise SourceError(ref, "Windows paths are not supported; use '/' separators")
    elif scheme:
        raise SourceError(ref, f"unsupported scheme {scheme}: (use gs:// or https://)")
    else:
        raise SourceError(ref, "expected a gs:// or https:// URI, or an absolute local path")


def location_of(uri: str, *, policy: FetchPolicy) -> Location:
    """The folder that relative references in the index file at ``uri`` resolve against."""
    scheme = _scheme(uri)
    if scheme == "gs":
        bucket, key = _split_gs(uri)
        store = _bucket_store(bucket, uri)
        return BlobLocation(store, bucket=bucket, folder=key.rpartition("/")[0])
    if scheme == "https":
        parts = urlsplit(uri)
        folder = parts.path.rpartition("/")[0]
        return HttpsLocation(f"https://{parts.netloc}{folder}/", policy=policy)
    if scheme == "file" or uri.startswith("/"):
        assert policy.import_root is not None  # _local_path refused it otherwise
        return LocalLocation(_local_path(uri, policy).parent, import_root=policy.import_root)
    raise SourceError(uri, "expected the gs://, https:// or local path of an index file")


class BlobLocation(Location):
    """A folder of a Cloud Storage bucket; ``..`` may climb to the bucket's top, not above."""

    def __init__(self, store: BlobStore, *, bucket: str, folder: str) -> None:
        self.store = store
        self.bucket = bucket
        self.folder = folder.strip("/")

    def copy(self, ref: str, out: BinaryIO, *, max_bytes: int) -> int:
        base = self.folder.split("/") if self.folder else []
        key = "/".join(_join(base, ref, top=f"gs://{self.bucket}/"))
        return _copy_blob(self.store, key, out, f"gs://{self.bucket}/{key}", max_bytes=max_bytes)

    def describe(self) -> str:
        return f"gs://{self.bucket}/{self.folder}/" if self.folder else f"gs://{self.bucket}/"


class LocalLocation(Location):
    """A folder under the operator's import root; ``..`` may climb to the root, not above."""

    def __init__(self, folder: Path, *, import_root: Path) -> None:
        self.root = import_root.resolve()
        self.folder = _inside_root(folder, self.root, str(folder))

    def copy(self, ref: str, out: BinaryIO, *, max_bytes: int) -> int:
        parts = _join(list(self.folder.relative_to(self.root).parts), ref, top=f"{self.root}/")
        # Checked again after joining: a link inside the root may point out of it.
        path = _inside_root(self.root.joinpath(*parts), self.root, ref)
        return _copy_file(path, out, str(path), max_bytes=max_bytes)

    def describe(self) -> str:
        return f"{self.folder}/"


class HttpsLocation(Location):
    """The folder of an index file served over https, read under the same policy."""

    def __init__(self, base_url: str, *, policy: FetchPolicy) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.policy = policy

    def copy(self, ref: str, out: BinaryIO, *, max_bytes: int) -> int:
        parts = urlsplit(self.base_url)
        base = [unquote(part) for part in parts.path.split("/") if part]
        path = "/".join(quote(part, safe=_URL_SAFE) for part in _join(base, ref, top="/"))
        url = f"https://{parts.netloc}/{path}"
        return _copy_https(url, out, policy=self.policy, max_bytes=max_bytes)

    def describe(self) -> str:
        return self.base_url


class ZipLocation(Location):
    """An uploaded zip archive, checked as a whole when it is opened.

    Refused outright: member names that could point outside the archive when extracted,
    duplicate or encrypted members, and zip bombs (a declared total over ``max_total_bytes``,
    or a member over 1 MiB that inflates more than 200 times). Reads never return more than a
    member declared, whatever its headers say. Folders, ``__MACOSX/`` and dotfiles are skipped.

    A relative reference resolves against the folder of the index file (see :meth:`beside`)
    and, when no member is there, against the top of the archive. Names are case-sensitive.
    Use it as a context manager; views from :meth:`beside` share the open archive.
    """

    def __init__(self, path: Path, *, max_total_bytes: int, name: str | None = None) -> None:
        self.name = name or path.name  # the name users know the archive by
        self.folder: tuple[str, ...] = ()
        try:
            self._archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(self.name, f"not a readable zip archive: {exc}") from None
        try:
            self._members = _check_archive(self._archive, self.name, max_total=max_total_bytes)
        except BaseException:
            self._archive.close()
            raise

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> ZipLocation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def image_members(self) -> list[str]:
        """Every file but the index files, sorted; whether each is an image is told by content."""
        return [name for name in self._members if not name.lower().endswith(INDEX_SUFFIXES)]

    def index_files(self) -> list[str]:
        """The CSV and JSON Lines files in the archive, sorted."""
        return [name for name in self._members if name.lower().endswith(INDEX_SUFFIXES)]

    def member_size(self, member: str) -> int:
        """The uncompressed size ``member`` declares."""
        return self._info(member).file_size

    @contextmanager
    def open_member(self, member: str) -> Iterator[BinaryIO]:
        """A streaming reader of ``member`` (a name from this archive's lists).

        It raises SourceError if the member is corrupt or yields more than it declared.
        """
        info = self._info(member)
        source = f"{member} in {self.name}"
        try:
            stream = self._archive.open(info)
        except (*_ZIP_ERRORS, NotImplementedError) as exc:
            raise SourceError(source, f"corrupt zip member: {exc}") from None
        with stream:
            yield cast(BinaryIO, _CappedReader(stream, info.file_size, source))

    def beside(self, member: str) -> ZipLocation:
        """This archive, with relative paths resolved against the folder of ``member``."""
        view = copy.copy(self)  # shares the open archive; closing either closes both
        view.folder = tuple(_join([], member, top=self.name)[:-1])
        return view

    def member_name(self, ref: str) -> str | None:
        """The member a relative reference names, or None when there is none."""
        for folder in [self.folder, ()] if self.folder else [()]:
            try:
                name = "/".join(_join(list(folder), ref, top=self.name))
            except SourceError:
                continue
            if name in self._members:
                return name
        return None

    def copy(self, ref: str, out: BinaryIO, *, max_bytes: int) -> int:
        _join(list(self.folder), ref, top=self.name)  # refuse a bad path with its own reason
        member = self.member_name(ref)
        if member is None:
            raise SourceError(f"{ref} in {self.describe()}", "not found")
        size = self.member_size(member)
        if size > max_bytes:
            raise SourceError(f"{member} in {self.name}", over_limit(size, max_bytes))
        with self.open_member(member) as stream:
            return _copy_capped(stream, out, size, f"{member} in {self.name}")

    def describe(self) -> str:
        return f"{self.name}:{'/'.join(self.folder)}/" if self.folder else self.name

    def _info(self, member: str) -> zipfile.ZipInfo:
        info = self._members.get(member)
        if info is None:
            raise SourceError(f"{member} in {self.name}", "not found")
        return info


class _CappedReader(io.RawIOBase):
    """A member's stream that refuses to yield more than the member declared."""

    def __init__(self, stream: IO[bytes], limit: int, source: str) -> None:
        self._stream = stream
        self._left = limit
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            # One byte more than is left, so a member that lies about its size is caught.
            data = self._stream.read(min(len(buffer), self._left + 1))
        except _ZIP_ERRORS as exc:
            raise SourceError(self._source, f"corrupt zip member: {exc}") from None
        if len(data) > self._left:
            raise SourceError(self._source, "holds more bytes than its header declares")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _copy_https(url: str, out: BinaryIO, *, policy: FetchPolicy, max_bytes: int) -> int:
    """GET an https URL into ``out``, guarding against requests into the server's network.

    The host is resolved once and every address checked; the connection then goes to a
    checked address (so a second DNS answer cannot move it), with the URL's host in the
    Host header, SNI and certificate check. Redirects are refused, not followed.
    """
    if not policy.allow_https:
        raise SourceError(url, "https:// sources are not allowed on this server")
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise SourceError(url, f"invalid URL: {exc}") from None
    host = parts.hostname
    if not host:
        raise SourceError(url, "the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise SourceError(url, "credentials in URLs are not supported")
    addresses = _resolve(host, port, url)
    if not policy.allow_private_https:
        for address in addresses:
            problem = _address_problem(address)
            if problem is None:
                continue
            if _is_ip_literal(host):
                raise SourceError(url, f"{address} is {problem}; refused")
            raise SourceError(url, f"{host} resolves to {address}, {problem}; refused")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + policy.timeout_s
    connection = _connect(host, port, addresses, _tls_context(policy.https_cafile), policy, url)
    try:
        try:
            connection.request(
                "GET", target, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            )
            response = connection.getresponse()
        except _HTTP_ERRORS as exc:
            raise SourceError(url, f"request failed: {_why(exc)}") from None
        if 300 <= response.status < 400:
            where = response.getheader("Location", "elsewhere")
            raise SourceError(
                url, f"redirected ({response.status}) to {where}; redirects are not followed"
            )
        if response.status != 200:
            raise SourceError(url, f"HTTP {response.status} {response.reason}")
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise SourceError(url, over_limit(int(declared), max_bytes))
        return _copy_capped(
            response,
            out,
            max_bytes,
            url,
            overflow=f"more than the {max_bytes:,}-byte limit",
            read_errors=_HTTP_ERRORS,
            deadline=deadline,
            sock=connection.sock,
        )
    finally:
        connection.close()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to a fixed IP address that still speaks TLS and HTTP to ``host``."""

    def __init__(
        self, host: str, port: int, *, address: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _connect(
    host: str,
    port: int,
    addresses: list[IpAddress],
    context: ssl.SSLContext,
    policy: FetchPolicy,
    url: str,
) -> _PinnedHTTPSConnection:
    """A TLS connection to the first checked address that answers."""
    failures = []
    for address in addresses:
        connection = _PinnedHTTPSConnection(
            host, port, address=str(address), context=context, timeout=policy.timeout_s
        )
        try:
            connection.connect()
        except ssl.SSLError as exc:
            connection.close()
            raise SourceError(url, f"TLS failed: {exc}") from None
        except OSError as exc:
            connection.close()
            failures.append(f"{address}: {exc}")
            continue
        return connection
    raise SourceError(url, f"cannot connect ({'; '.join(failures)})")


@lru_cache(maxsize=8)
def _tls_context(cafile: Path | None) -> ssl.SSLContext:
    # Loading a trust store takes milliseconds, and an import may fetch thousands of images.
    return ssl.create_default_context(cafile=os.fspath(cafile) if cafile is not None else None)


def _resolve(host: str, port: int, url: str) -> list[IpAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise SourceError(url, f"cannot resolve {host}: {exc}") from None
    addresses: list[IpAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise SourceError(url, f"cannot resolve {host}")
    return addresses


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address_problem(address: IpAddress) -> str | None:
    """Why an https import must not connect to ``address``, or None when it may."""
    candidates: list[IpAddress] = []
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            candidates.append(address.sixtofour)
        if address.teredo is not None:
            candidates.extend(address.teredo)
        if address in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    # The IPv4 address inside is named first: it says where the connection would really go.
    candidates.append(address)
    for candidate in candidates:
        # The most specific kind first; "private" and "not global" cover wide ranges.
        for problem, flagged in (
            ("a loopback address", candidate.is_loopback),
            ("a link-local address", candidate.is_link_local),
            ("an unspecified address", candidate.is_unspecified),
            ("a multicast address", candidate.is_multicast),
            ("a reserved address", candidate.is_reserved),
            ("a private address", candidate.is_private),
            ("not a public address", not candidate.is_global),
        ):
            if flagged:
                return problem
    return None


def _copy_capped(
    stream: IO[bytes] | http.client.HTTPResponse,
    out: BinaryIO,
    limit: int,
    source: str,
    *,
    overflow: str = "holds more bytes than its header declares",
    read_errors: tuple[type[Exception], ...] = (),
    deadline: float | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Copy to the end, refusing as soon as more than ``limit`` bytes come out.

    ``read_errors`` raised by the stream become SourceError; errors writing ``out`` are the
    caller's own and pass through.
    """
    total = 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError(source, "timed out")
            if sock is not None:
                sock.settimeout(left)
        try:
            chunk = stream.read(min(COPY_CHUNK, limit + 1 - total))
        except read_errors as exc:
            raise SourceError(source, f"reading failed: {_why(exc)}") from None
        if not chunk:
            return total
        total += len(chunk)
        if total > limit:
            raise SourceError(source, overflow)
        out.write(chunk)


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@lru_cache(maxsize=64)
def _store_for_bucket(bucket: str) -> BlobStore:
    # One client per bucket for the process: each new one looks up credentials again.
    return open_blob_store(f"gs://{bucket}")


def _bucket_store(bucket: str, uri: str) -> BlobStore:
    from google.auth.exceptions import GoogleAuthError

    try:
        return _store_for_bucket(bucket)
    except ValueError as exc:
        raise SourceError(uri, str(exc)) from None
    except GoogleAuthError as exc:  # no credentials: the client looks for them when made
        raise SourceError(uri, f"Cloud Storage is unreachable: {_why(exc)}") from None


def _copy_blob(store: BlobStore, key: str, out: BinaryIO, source: str, *, max_bytes: int) -> int:
    # Imported here: the Google libraries load only once gs:// is used, as in app.kit.blobs.
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    try:
        size = store.stat(key).size
        if size > max_bytes:
            raise SourceError(source, over_limit(size, max_bytes))
        reader = store.open(key)
    except BlobNotFound:
        raise SourceError(source, "not found") from None
    except InvalidInput as exc:
        raise SourceError(source, f"not a readable object name: {exc.message}") from None
    except GoogleAPIError as exc:
        raise SourceError(source, f"Cloud Storage refused: {exc}") from None
    except (GoogleAuthError, OSError) as exc:
        raise SourceError(source, f"Cloud Storage is unreachable: {_why(exc)}") from None
    with reader as stream:
        # The object may have been replaced since stat: the limit still holds.
        return _copy_capped(
            stream,
            out,
            max_bytes,
            source,
            overflow=over_limit(max_bytes + 1, max_bytes),
            read_errors=(GoogleAPIError, GoogleAuthError, OSError),
        )


def _copy_file(path: Path, out: BinaryIO, source: str, *, max_bytes: int) -> int:
    """Copy a regular file, refusing anything else (a FIFO would hang, a device never ends)."""
    try:
        # The path was resolved: a link at its end now was swapped in since, so refuse it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise SourceError(source, "not found") from None
    except OSError as exc:
        raise SourceError(source, f"cannot be opened: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SourceError(source, "not a regular file")
    with os.fdopen(fd, "rb") as stream:
        if info.st_size > max_bytes:
            raise SourceError(source, over_limit(info.st_size, max_bytes))
        return _copy_capped(
            stream,
            out,
            max_bytes,
            source,
            overflow=over_limit(max_bytes + 1, max_bytes),
            read_errors=(OSError,),
        )


def _local_path(ref: str, policy: FetchPolicy) -> Path:
    """The real path a local reference names, once it is known to lie inside the import root."""
    if policy.import_root is None:
        raise SourceError(ref, "local paths are not allowed: set EDGE_AUTOML_IMPORT_ROOT")
    if ref.startswith("/"):
        path = Path(ref)
    else:
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(ref, "file:// URIs must not name a host")
        path = Path(unquote(parts.path))
    return _inside_root(path, policy.import_root.resolve(), ref)


def _inside_root(path: Path, root: Path, source: str) -> Path:
    """``path`` with every link resolved, if that lies inside ``root``; else SourceError."""
    if not path.is_absolute():
        raise SourceError(source, "local paths must be absolute")
    real_root = root.resolve()
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise SourceError(source, f"cannot be resolved: {exc}") from None
    if not real.is_relative_to(real_root):
        raise SourceError(source, f"outside the import root {real_root}")
    return real


def _check_archive(
    archive: zipfile.ZipFile, display: str, *, max_total: int
) -> dict[str, zipfile.ZipInfo]:
    """The archive's readable members by normalised name, or SourceError for the first problem."""
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in archive.infolist():
        problem = _member_name_problem(info.filename)
        if problem is not None:
            raise SourceError(f"{info.filename!r} in {display}", problem)
        source = f"{info.filename} in {display}"
        total += info.file_size
        if total > max_total:
            raise SourceError(
                display, f"zip bomb: its members declare more than {max_total:,} bytes in all"
            )
        inflates_too_much = info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        if inflates_too_much and info.file_size > RATIO_CHECK_FROM_BYTES:
            raise SourceError(
                source,
                f"zip bomb: {info.compress_size:,} bytes inflate to {info.file_size:,} "
                f"(over {MAX_COMPRESSION_RATIO}:1)",
            )
        if info.flag_bits & 0x1:
            raise SourceError(source, "encrypted members are not supported")
        parts = [part for part in info.filename.split("/") if part not in ("", ".")]
        if info.is_dir() or not parts or _skipped(parts):
            continue
        name = "/".join(parts)
        if name in members:
            raise SourceError(source, "the archive holds two members of this name")
        members[name] = info
    return dict(sorted(members.items()))


def _member_name_problem(name: str) -> str | None:
    if not name:
        return "empty member name"
    if "\0" in name:
        return "member name contains NUL"
    if "\\" in name:
        return "member name contains a backslash"
    if name.startswith("/"):
        return "absolute member name"
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        return "member name starts with a drive letter"
    if ".." in name.split("/"):
        return "member name contains a '..' segment"
    return None


def _skipped(parts: list[str]) -> bool:
    # Finder's resource forks and hidden files ride along in many archives; they are not data.
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _join(base: list[str], ref: str, *, top: str) -> list[str]:
    """``ref`` resolved against the folder ``base``, as path segments; never above ``top``."""
    if "\0" in ref or "\\" in ref:
        raise SourceError(ref, "paths must not contain NUL or backslashes")
    if ref.startswith("/"):
        raise SourceError(ref, f"expected a path relative to a folder in {top}")
    parts = list(base)
    for part in ref.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise SourceError(ref, f"goes above {top}")
            parts.pop()
        else:
            parts.append(part)
    if not parts or ref.endswith("/"):
        raise SourceError(ref, "names a folder, not a file")
    return parts


def _scheme(ref: str) -> str:
    """The URI scheme of ``ref`` in lower case, or "" for a path."""
    head, sep, _ = ref.partition(":")
    if not sep or not head or not head[0].isalpha():
        return ""
    if all(char.isalnum() or char in "+-." for char in head):
        return head.lower()
    return ""


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("gs://") :].partition("/")
    if uri[:5].lower() != "gs://" or not bucket or not key or key.endswith("/"):
        raise SourceError(uri, "expected gs://bucket/path/to/object")
    return bucket, key

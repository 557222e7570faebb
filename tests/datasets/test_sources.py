from __future__ import annotations

import datetime as dt
import io
import ipaddress
import os
import ssl
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.cloud import storage

from app.datasets.sources import (
    BlobLocation,
    FetchPolicy,
    LocalLocation,
    SourceError,
    ZipLocation,
    fetch,
    fetch_to,
    location_of,
)

MiB = 1024 * 1024
IMAGE = b"\x89PNG not really, but bytes are bytes" * 10
NO_LOCAL = FetchPolicy(max_bytes=MiB)


def failure(ref: str, policy: FetchPolicy = NO_LOCAL, **params: object) -> SourceError:
    with pytest.raises(SourceError) as caught:
        fetch(ref, policy=policy, **params)  # type: ignore[arg-type]
    return caught.value


# -- zip archives --------------------------------------------------------------------------


def write_zip(
    path: Path, files: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    return path


def patch_headers(path: Path, offsets: dict[tuple[bytes, int], bytes]) -> None:
    """Overwrite fields of the first local file header and the first central directory entry."""
    data = bytearray(path.read_bytes())
    for (signature, offset), value in offsets.items():
        start = data.index(signature) + offset
        data[start : start + len(value)] = value
    path.write_bytes(bytes(data))


def open_zip(path: Path, *, max_total_bytes: int = 20 * 1024**3) -> ZipLocation:
    return ZipLocation(path, max_total_bytes=max_total_bytes, name="upload.zip")


def zip_failure(path: Path, **params: int) -> SourceError:
    with pytest.raises(SourceError) as caught:
        open_zip(path, **params)
    return caught.value


@pytest.fixture
def dataset_zip(tmp_path: Path) -> Path:
    return write_zip(
        tmp_path / "dataset.zip",
        {
            "dataset/": b"",
            "dataset/labels.csv": b"images/a/cat.jpg,cat\n",
            "dataset/images/a/cat.jpg": b"cat bytes",
            "dataset/images/b/dog.png": b"dog bytes",
            "./top.jpg": b"top bytes",
            "dataset/.hidden.jpg": b"hidden",
            ".DS_Store": b"finder",
            "__MACOSX/dataset/._labels.csv": b"resource fork",
            "extra/more.JSONL": b"{}\n",
        },
    )


def test_a_good_archive_lists_its_index_files_and_other_members(dataset_zip: Path) -> None:
    with open_zip(dataset_zip) as archive:
        assert archive.index_files() == ["dataset/labels.csv", "extra/more.JSONL"]
        assert archive.image_members() == [
            "dataset/images/a/cat.jpg",
            "dataset/images/b/dog.png",
            "top.jpg",
        ]
        assert archive.member_size("dataset/labels.csv") == len(b"images/a/cat.jpg,cat\n")
        with archive.open_member("dataset/labels.csv") as stream:
            assert stream.read() == b"images/a/cat.jpg,cat\n"


def test_paths_resolve_against_the_index_file_then_the_archive_top(dataset_zip: Path) -> None:
    with open_zip(dataset_zip) as archive:
        beside = archive.beside("dataset/labels.csv")
        assert beside.describe() == "upload.zip:dataset/"
        assert beside.read("images/a/cat.jpg", max_bytes=MiB) == b"cat bytes"
        assert beside.read("./images/b/../a/cat.jpg", max_bytes=MiB) == b"cat bytes"
        assert beside.read("../top.jpg", max_bytes=MiB) == b"top bytes"
        # Written from the top of the archive: found there when nothing is beside the index.
        assert beside.read("dataset/images/b/dog.png", max_bytes=MiB) == b"dog bytes"
        assert fetch("images/b/dog.png", base=beside, policy=NO_LOCAL) == b"dog bytes"
        assert beside.member_name("./images/a/cat.jpg") == "dataset/images/a/cat.jpg"
        assert archive.read("top.jpg", max_bytes=MiB) == b"top bytes"


def test_archive_lookups_are_exact(dataset_zip: Path) -> None:
    with open_zip(dataset_zip) as archive:
        beside = archive.beside("dataset/labels.csv")
        with pytest.raises(
            SourceError, match=r"images/A/cat.jpg in upload.zip:dataset/: not found"
        ):
            beside.read("images/A/cat.jpg", max_bytes=MiB)
        with pytest.raises(SourceError, match=r"goes above upload\.zip"):
            beside.read("../../top.jpg", max_bytes=MiB)
        with pytest.raises(SourceError, match="not found"):
            archive.read(".DS_Store", max_bytes=MiB)  # skipped, so never served
        with pytest.raises(SourceError, match=r"9 bytes is over the 4-byte limit"):
            beside.read("images/a/cat.jpg", max_bytes=4)
        assert beside.member_name("images/missing.jpg") is None


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../evil.jpg", "'..' segment"),
        ("images/../../evil.jpg", "'..' segment"),
        ("/etc/passwd", "absolute member name"),
        ("images\\evil.jpg", "backslash"),
        ("C:/evil.jpg", "drive letter"),
    ],
)
def test_unsafe_member_names_refuse_the_archive(tmp_path: Path, member: str, problem: str) -> None:
    path = write_zip(tmp_path / "bad.zip", {"fine.jpg": b"x", member: b"y"})
    error = zip_failure(path)
    assert error.source == f"{member!r} in upload.zip"
    assert problem in error.reason


def test_a_zip_bomb_member_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bomb.zip", {"zeros.jpg": bytes(50 * MiB)})
    assert path.stat().st_size < 100_000
    error = zip_failure(path)
    assert error.source == "zeros.jpg in upload.zip"
    assert error.reason.startswith("zip bomb: ")


def test_a_small_member_may_compress_well(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "fine.zip", {"zeros.bmp": bytes(512 * 1024)})
    with open_zip(path) as archive:
        assert archive.read("zeros.bmp", max_bytes=MiB) == bytes(512 * 1024)


def test_an_archive_declaring_too_much_in_all_is_refused(tmp_path: Path) -> None:
    files = {f"{n}.jpg": os.urandom(1000) for n in range(3)}
    path = write_zip(tmp_path / "big.zip", files, compression=zipfile.ZIP_STORED)
    assert open_zip(path, max_total_bytes=3000).image_members() == ["0.jpg", "1.jpg", "2.jpg"]
    error = zip_failure(path, max_total_bytes=2999)
    assert error.source == "upload.zip"
    assert "more than 2,999 bytes in all" in error.reason


def test_an_encrypted_member_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "secret.zip", {"secret.jpg": b"ciphertext, honestly"})
    # The general-purpose flag's bit 0 marks a member as encrypted.
    patch_headers(path, {(b"PK\x03\x04", 6): b"\x01\x00", (b"PK\x01\x02", 8): b"\x01\x00"})
    assert "encrypted" in zip_failure(path).reason


def test_a_member_holding_more_than_it_declares_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "liar.zip", {"liar.jpg": os.urandom(5000)})
    # Both headers now claim 100 bytes; the compressed data still holds 5000.
    size = struct.pack("<I", 100)
    patch_headers(path, {(b"PK\x03\x04", 22): size, (b"PK\x01\x02", 24): size})
    with open_zip(path) as archive:
        assert archive.member_size("liar.jpg") == 100
        with pytest.raises(SourceError, match=r"^liar.jpg in upload.zip: "):
            archive.read("liar.jpg", max_bytes=MiB)
        with pytest.raises(SourceError), archive.open_member("liar.jpg") as stream:
            stream.read()


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.zip"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("a.jpg", b"one")
        archive.writestr("./a.jpg", b"two")
        archive.writestr("a.jpg", b"three")
    assert "two members" in zip_failure(path).reason


def test_a_file_that_is_no_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.zip"
    path.write_bytes(b"IMAGE_URI\n")
    assert "not a readable zip archive" in zip_failure(path).reason


# -- Cloud Storage -------------------------------------------------------------------------


@pytest.fixture
def bucket(gcs_bucket: str, gcs_client: storage.Client) -> str:
    objects = {
        "data/labels.csv": b"images/cat.jpg,cat\n",
        "data/images/cat.jpg": b"cat bytes",
        "other/dog.jpg": b"dog bytes",
        "big.jpg": bytes(2 * MiB),
    }
    for name, content in objects.items():
        gcs_client.bucket(gcs_bucket).blob(name).upload_from_string(content)
    return gcs_bucket


def test_gs_uris_are_read_through_the_blob_store(bucket: str) -> None:
    assert fetch(f"gs://{bucket}/data/images/cat.jpg", policy=NO_LOCAL) == b"cat bytes"
    out = io.BytesIO()
    assert fetch_to(f"gs://{bucket}/other/dog.jpg", out, policy=NO_LOCAL) == len(b"dog bytes")
    assert out.getvalue() == b"dog bytes"


def test_relative_paths_resolve_beside_a_gs_index_file(bucket: str) -> None:
    base = location_of(f"gs://{bucket}/data/labels.csv", policy=NO_LOCAL)
    assert isinstance(base, BlobLocation)
    assert base.describe() == f"gs://{bucket}/data/"
    assert fetch("images/cat.jpg", base=base, policy=NO_LOCAL) == b"cat bytes"
    assert fetch("../other/dog.jpg", base=base, policy=NO_LOCAL) == b"dog bytes"
    error = failure("../../x.jpg", base=base)
    assert error.reason == f"goes above gs://{bucket}/"


def test_a_missing_object_names_its_uri(bucket: str) -> None:
    error = failure(f"gs://{bucket}/data/images/missing.jpg")
    assert str(error) == f"gs://{bucket}/data/images/missing.jpg: not found"
    base = location_of(f"gs://{bucket}/data/labels.csv", policy=NO_LOCAL)
    assert str(failure("nope.jpg", base=base)) == f"gs://{bucket}/data/nope.jpg: not found"


def test_an_object_over_the_limit_is_refused_before_download(bucket: str) -> None:
    error = failure(f"gs://{bucket}/big.jpg", max_bytes=MiB)
    assert error.reason == "2.1 MB is over the 1 MB limit"
    assert len(fetch(f"gs://{bucket}/big.jpg", policy=FetchPolicy(max_bytes=3 * MiB))) == 2 * MiB


def test_gs_without_cloud_storage_credentials_is_a_source_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    error = failure("gs://no-credentials-here/x.jpg")
    assert error.reason.startswith("Cloud Storage is unreachable: ")
    assert "missing.json" in error.reason


@pytest.mark.parametrize("ref", ["gs://", "gs://bucket-only", "gs://b/folder/"])
def test_malformed_gs_uris_are_refused(ref: str) -> None:
    assert "expected gs://bucket/path/to/object" in failure(ref).reason


# -- local paths ---------------------------------------------------------------------------


@pytest.fixture
def import_root(tmp_path: Path) -> Path:
    root = tmp_path / "imports"
    (root / "ds" / "images").mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "ds" / "labels.csv").write_bytes(b"images/cat.jpg,cat\n")
    (root / "ds" / "images" / "cat.jpg").write_bytes(b"cat bytes")
    (root / "shared" / "dog.jpg").write_bytes(b"dog bytes")
    (tmp_path / "secret.jpg").write_bytes(b"secret bytes")
    (root / "ds" / "images" / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "ds" / "inside.jpg").symlink_to(root / "shared" / "dog.jpg")
    return root


def local(root: Path) -> FetchPolicy:
    return FetchPolicy(max_bytes=MiB, import_root=root)


def test_local_paths_need_an_import_root(import_root: Path) -> None:
    for ref in (str(import_root / "ds/images/cat.jpg"), (import_root / "ds/labels.csv").as_uri()):
        assert failure(ref).reason == "local paths are not allowed: set EDGE_AUTOML_IMPORT_ROOT"


def test_local_paths_and_file_uris_inside_the_root_are_read(import_root: Path) -> None:
    policy = local(import_root)
    assert fetch(str(import_root / "ds/images/cat.jpg"), policy=policy) == b"cat bytes"
    assert fetch((import_root / "shared/dog.jpg").as_uri(), policy=policy) == b"dog bytes"
    assert fetch(str(import_root / "ds/inside.jpg"), policy=policy) == b"dog bytes"


@pytest.mark.parametrize(
    "ref",
    [
        "{tmp}/secret.jpg",
        "{root}/../secret.jpg",
        "{root}/ds/images/escape.jpg",
        "file://{tmp}/secret.jpg",
        "/etc/passwd",
    ],
)
def test_local_paths_outside_the_root_are_refused(import_root: Path, ref: str) -> None:
    ref = ref.format(tmp=import_root.parent, root=import_root)
    assert "outside the import root" in failure(ref, local(import_root)).reason


def test_relative_paths_resolve_beside_a_local_index_file(import_root: Path) -> None:
    policy = local(import_root)
    base = location_of(str(import_root / "ds/labels.csv"), policy=policy)
    assert isinstance(base, LocalLocation)
    assert fetch("images/cat.jpg", base=base, policy=policy) == b"cat bytes"
    assert fetch("../shared/dog.jpg", base=base, policy=policy) == b"dog bytes"
    assert "goes above" in failure("../../secret.jpg", policy, base=base).reason
    assert "outside the import root" in failure("images/escape.jpg", policy, base=base).reason
    assert failure("images/missing.jpg", policy, base=base).reason == "not found"


def test_only_regular_files_are_read(import_root: Path) -> None:
    fifo = import_root / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    assert failure(str(fifo), local(import_root)).reason == "not a regular file"
    assert failure(str(import_root / "ds"), local(import_root)).reason == "not a regular file"


def test_a_local_file_over_the_limit_is_refused(import_root: Path) -> None:
    policy = FetchPolicy(max_bytes=4, import_root=import_root)
    ref = str(import_root / "ds/images/cat.jpg")
    assert failure(ref, policy).reason == "9 bytes is over the 4-byte limit"


# -- other references ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("http://example.com/cat.jpg", "plain http:// is not allowed; use https://"),
        ("HTTP://example.com/cat.jpg", "plain http:// is not allowed; use https://"),
        ("ftp://example.com/cat.jpg", "unsupported scheme ftp:"),
        ("s3://bucket/cat.jpg", "unsupported scheme s3:"),
        ("data:image/png;base64,AAAA", "unsupported scheme data:"),
        ("C:\\photos\\cat.jpg", "Windows paths are not supported"),
        ("images\\cat.jpg", "Windows paths are not supported"),
        ("images/cat.jpg", "a relative path needs an archive or an index file"),
        ("", "empty path"),
    ],
)
def test_references_that_cannot_be_read_say_why(ref: str, reason: str) -> None:
    policy = FetchPolicy(max_bytes=MiB, allow_https=True)
    assert failure(ref, policy).reason.startswith(reason)


# -- https ---------------------------------------------------------------------------------


@dataclass
class TlsServer:
    port: int
    ca_file: Path
    body: bytes
    # (SNI server name, Host header, path) of each request, in order.
    seen: list[tuple[str | None, str | None, str]] = field(default_factory=list)


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A CA (PEM, for clients) and a localhost server certificate it signed (chain + key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-automl test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain_file = folder / "server.pem"
    chain_file.write_bytes(
        server.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, chain_file


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """An https server on 127.0.0.1 with a certificate for localhost from a test CA."""
    ca_file, chain_file = make_certificates(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_file)

    def remember_sni(sock: ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        sock.sni = server_name  # type: ignore[attr-defined]

    context.sni_callback = remember_sni  # type: ignore[assignment]
    state = TlsServer(port=0, ca_file=ca_file, body=IMAGE)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            sni = getattr(self.request, "sni", None)
            state.seen.append((sni, self.headers.get("Host"), self.path))
            if self.path == "/images/cat.png":
                self._reply(200, state.body)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", f"https://localhost:{state.port}/images/cat.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/big":
                self._reply(200, bytes(5000))
            elif self.path == "/unsized":
                # HTTP/1.0 without Content-Length: the body runs until the connection closes.
                self.send_response(200)
                self.end_headers()
                self.wfile.write(bytes(5000))
            else:
                self._reply(404, b"no such thing")

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def https_policy(server: TlsServer, *, max_bytes: int = MiB) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=max_bytes,
        allow_https=True,
        allow_private_https=True,
        https_cafile=server.ca_file,
        timeout_s=10,
    )


def test_an_https_image_is_fetched_with_the_host_in_sni_and_host_header(
    tls_server: TlsServer,
) -> None:
    url = f"https://localhost:{tls_server.port}/images/cat.png"
    assert fetch(url, policy=https_policy(tls_server)) == IMAGE
    assert tls_server.seen[-1] == ("localhost", f"localhost:{tls_server.port}", "/images/cat.png")


def test_relative_paths_resolve_beside_an_https_index_file(tls_server: TlsServer) -> None:
    policy = https_policy(tls_server)
    base = location_of(f"https://localhost:{tls_server.port}/images/labels.csv", policy=policy)
    assert fetch("./cat.png", base=base, policy=policy) == IMAGE
    assert failure("../../cat.png", policy, base=base).reason == "goes above /"


def test_the_certificate_is_verified(tls_server: TlsServer) -> None:
    policy = FetchPolicy(max_bytes=MiB, allow_https=True, allow_private_https=True, timeout_s=10)
    error = failure(f"https://localhost:{tls_server.port}/images/cat.png", policy)
    assert error.reason.startswith("TLS failed: ")
    assert "CERTIFICATE_VERIFY_FAILED" in error.reason


def test_a_redirect_is_refused_not_followed(tls_server: TlsServer) -> None:
    before = len(tls_server.seen)
    error = failure(f"https://localhost:{tls_server.port}/redirect", https_policy(tls_server))
    assert error.reason == (
        f"redirected (302) to https://localhost:{tls_server.port}/images/cat.png; "
        "redirects are not followed"
    )
    assert [path for *_, path in tls_server.seen[before:]] == ["/redirect"]


def test_the_size_limit_holds_with_and_without_a_content_length(tls_server: TlsServer) -> None:
    policy = https_policy(tls_server, max_bytes=1000)
    big = failure(f"https://localhost:{tls_server.port}/big", policy)
    assert big.reason == "5,000 bytes is over the 1,000-byte limit"
    unsized = failure(f"https://localhost:{tls_server.port}/unsized", policy)
    assert unsized.reason == "more than the 1,000-byte limit"
    assert (
        len(fetch(f"https://localhost:{tls_server.port}/unsized", policy=https_policy(tls_server)))
        == 5000
    )


def test_an_http_error_is_reported(tls_server: TlsServer) -> None:
    error = failure(f"https://localhost:{tls_server.port}/missing.jpg", https_policy(tls_server))
    assert error.reason == "HTTP 404 Not Found"


def test_https_is_off_unless_the_operator_allows_it(tls_server: TlsServer) -> None:
    error = failure(f"https://localhost:{tls_server.port}/images/cat.png")
    assert error.reason == "https:// sources are not allowed on this server"


def test_a_loopback_server_is_refused_without_a_request(tls_server: TlsServer) -> None:
    before = len(tls_server.seen)
    policy = FetchPolicy(max_bytes=MiB, allow_https=True, https_cafile=tls_server.ca_file)
    error = failure(f"https://localhost:{tls_server.port}/images/cat.png", policy)
    assert "a loopback address; refused" in error.reason
    assert len(tls_server.seen) == before


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://127.0.0.1/x.jpg", "a loopback address"),
        ("https://localhost/x.jpg", "a loopback address"),
        ("https://[::1]/x.jpg", "a loopback address"),
        ("https://10.0.0.1/x.jpg", "a private address"),
        ("https://192.168.1.20/x.jpg", "a private address"),
        ("https://169.254.169.254/computeMetadata/v1/", "a link-local address"),
        ("https://[fe80::1]/x.jpg", "a link-local address"),
        ("https://[fd00::1]/x.jpg", "a private address"),
        ("https://0.0.0.0/x.jpg", "an unspecified address"),
        ("https://224.0.0.1/x.jpg", "a multicast address"),
        ("https://240.0.0.1/x.jpg", "a reserved address"),
        ("https://100.64.0.1/x.jpg", "not a public address"),
        ("https://[::ffff:127.0.0.1]/x.jpg", "a loopback address"),
        ("https://[::ffff:169.254.169.254]/x.jpg", "a link-local address"),
        ("https://[64:ff9b::a00:1]/x.jpg", "a private address"),
        ("https://[2002:a00:1::]/x.jpg", "a private address"),
    ],
)
def test_https_into_private_networks_is_refused(url: str, problem: str) -> None:
    policy = FetchPolicy(max_bytes=MiB, allow_https=True, timeout_s=1)
    error = failure(url, policy)
    assert error.source == url
    assert error.reason.endswith(f"{problem}; refused")

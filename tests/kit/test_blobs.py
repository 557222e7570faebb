from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from app.errors import Conflict, InvalidInput, NotFound
from app.kit.blobs import (
    BlobNotFound,
    BlobStore,
    LocalBlobStore,
    SigningNotConfigured,
    open_blob_store,
)
from app.kit.blobs.gcs import object_of_url

MiB = 1024 * 1024


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return open_blob_store((tmp_path / "blobs").as_uri())
    bucket = request.getfixturevalue("gcs_bucket")
    return open_blob_store(f"gs://{bucket}/tenant-a")


def keys(store: BlobStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


# Both backends


def test_put_then_get_and_open_return_the_bytes(store: BlobStore) -> None:
    info = store.put("images/cat.jpg", b"meow", content_type="image/jpeg")

    assert (info.key, info.size, info.content_type) == ("images/cat.jpg", 4, "image/jpeg")
    assert store.get("images/cat.jpg") == b"meow"
    with store.open("images/cat.jpg") as reader:
        assert reader.read() == b"meow"


def test_put_streams_a_file_object_from_where_it_stands(store: BlobStore, tmp_path: Path) -> None:
    # Bigger than one upload chunk, so a resumable GCS upload takes several requests.
    payload = os.urandom(9 * MiB + 123)
    source = tmp_path / "source.bin"
    source.write_bytes(b"HEADER" + payload)

    with source.open("rb") as stream:
        stream.read(6)
        info = store.put("data/payload.bin", stream)

    assert info.size == len(payload)
    assert store.get("data/payload.bin") == payload


def test_put_streams_a_pipe_like_object_that_cannot_seek(store: BlobStore) -> None:
    payload = os.urandom(9 * MiB)
    stream = _Trickle(payload, step=256 * 1024)

    info = store.put("data/piped.bin", cast(BinaryIO, stream))

    assert info.size == len(payload)
    assert store.get("data/piped.bin") == payload


def test_put_replaces_the_bytes_and_content_type(store: BlobStore) -> None:
    store.put("notes.txt", b"first version", content_type="text/plain")

    info = store.put("notes.txt", b"second", content_type="text/markdown")

    assert store.get("notes.txt") == b"second"
    assert store.stat("notes.txt") == info
    assert (info.size, info.content_type) == (6, "text/markdown")


def test_a_write_without_waiting_for_the_disk_is_whole_and_sync_makes_it_durable(
    store: BlobStore,
) -> None:
    infos = [store.put(f"bulk/{i}", bytes([i]) * 100, durable=False) for i in range(5)]
    store.sync()
    assert [info.size for info in infos] == [100] * 5
    assert [store.get(f"bulk/{i}") for i in range(5)] == [bytes([i]) * 100 for i in range(5)]
    assert keys(store, "bulk/") == [f"bulk/{i}" for i in range(5)]


def test_put_if_absent_stores_only_the_first(store: BlobStore) -> None:
    assert store.put_if_absent("secrets/k", b"first") is True
    assert store.put_if_absent("secrets/k", b"second") is False
    assert store.get("secrets/k") == b"first"
    assert [info.key for info in store.list("secrets/")] == ["secrets/k"]


def test_exists_and_stat(store: BlobStore) -> None:
    assert not store.exists("a/b.csv")

    store.put("a/b.csv", b"x,y\n1,2\n", content_type="text/csv")

    assert store.exists("a/b.csv")
    assert not store.exists("a")  # a folder-like prefix is not a blob
    info = store.stat("a/b.csv")
    assert (info.key, info.size, info.content_type) == ("a/b.csv", 8, "text/csv")
    assert info.updated is not None and info.updated.tzinfo is not None
    assert abs(datetime.now(UTC) - info.updated) < timedelta(minutes=5)


def test_delete_removes_the_blob_and_is_idempotent(store: BlobStore) -> None:
    store.put("tmp/file", b"bye", content_type="text/plain")

    store.delete("tmp/file")
    store.delete("tmp/file")
    store.delete("never/existed")

    assert not store.exists("tmp/file")
    assert keys(store) == []
    with pytest.raises(BlobNotFound):
        store.get("tmp/file")


def test_list_filters_by_prefix_in_key_order(store: BlobStore) -> None:
    for key in ["labels/a.csv", "img/sub/z.jpg", "imgs", "img/cat.jpg", "img-x/y", "img/ant.jpg"]:
        store.put(key, key.encode(), content_type="image/jpeg" if key == "img/cat.jpg" else None)

    assert keys(store) == [
        "img-x/y",
        "img/ant.jpg",
        "img/cat.jpg",
        "img/sub/z.jpg",
        "imgs",
        "labels/a.csv",
    ]
    assert keys(store, "img/") == ["img/ant.jpg", "img/cat.jpg", "img/sub/z.jpg"]
    assert keys(store, "img") == ["img-x/y", "img/ant.jpg", "img/cat.jpg", "img/sub/z.jpg", "imgs"]
    assert keys(store, "nothing/") == []
    [cat] = store.list("img/c")
    assert (cat.key, cat.size, cat.content_type) == ("img/cat.jpg", 11, "image/jpeg")


INVALID_KEYS = [
    "",
    "/abs/path",
    "a//b",
    "trailing/",
    ".",
    "./a",
    "a/./b",
    "..",
    "a/../b",
    "back\\slash",
    "nul\0byte",
    "line\nfeed",
    ".~blob.tmp.x",
    "x" * 256,
]


def test_invalid_keys_are_rejected_by_every_operation(store: BlobStore) -> None:
    operations: list[Callable[[str], object]] = [
        lambda key: store.put(key, b"x"),
        store.get,
        store.open,
        store.exists,
        store.stat,
        store.delete,
        lambda key: store.download_url(key, expires_in=timedelta(minutes=1)),
    ]
    for key in INVALID_KEYS:
        for operation in operations:
            with pytest.raises(InvalidInput, match="invalid blob key"):
                operation(key)
    for prefix in ["/", "../", "a//", "a\\b"]:
        with pytest.raises(InvalidInput, match="invalid blob prefix"):
            store.list(prefix)
    assert keys(store) == []


@pytest.mark.parametrize("operation", ["get", "open", "stat"])
def test_missing_key_raises_blob_not_found(store: BlobStore, operation: str) -> None:
    store.put("present", b"here")

    with pytest.raises(BlobNotFound, match="'missing/key'") as caught:
        getattr(store, operation)("missing/key")

    assert isinstance(caught.value, NotFound)
    assert caught.value.status_code == 404


# Local folder


def test_a_failed_write_keeps_the_old_blob_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    store.put("model.bin", b"old", content_type="application/octet-stream")
    before = sorted(p.name for p in (tmp_path / "blobs").iterdir())

    with pytest.raises(OSError, match="connection lost"):
        store.put("model.bin", cast(BinaryIO, _FailingStream(chunks=3)), content_type="text/plain")

    assert store.get("model.bin") == b"old"
    assert store.stat("model.bin").content_type == "application/octet-stream"
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == before


def test_local_put_if_absent_has_one_winner_among_racers(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    won: list[bytes] = []

    def racer(n: int) -> None:
        store = LocalBlobStore(tmp_path)
        barrier.wait()
        if store.put_if_absent("secrets/k", bytes([n]) * 64):
            won.append(bytes([n]) * 64)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert LocalBlobStore(tmp_path).get("secrets/k") == won[0]
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["k"]  # no temp files


def test_local_listing_hides_temp_files_and_sidecars(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    store.put("a/b.txt", b"b", content_type="text/plain")
    (tmp_path / "blobs" / "a" / ".~blob.tmp.left-by-a-crash").write_bytes(b"partial")

    assert keys(store) == ["a/b.txt"]
    assert len(list((tmp_path / "blobs" / "a").iterdir())) == 3  # blob, sidecar, stray temp


def test_local_blob_and_folder_cannot_share_a_key(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    store.put("a", b"file")
    store.put("b/c", b"file")

    with pytest.raises(Conflict):
        store.put("a/b", b"under a file")
    with pytest.raises(Conflict):
        store.put("b", b"over a folder")
    assert keys(store) == ["a", "b/c"]


def test_relative_file_url_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = open_blob_store("file://./data/blobs")

    assert isinstance(store, LocalBlobStore)
    assert store.root == (tmp_path / "data" / "blobs").resolve()
    assert store.root.is_dir()
    assert store.url == "file://./data/blobs"


def test_local_download_url_is_none_so_the_api_streams(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    store.put("x", b"x")

    assert store.download_url("x", expires_in=timedelta(minutes=5)) is None


@pytest.mark.parametrize(
    "url",
    [
        "",
        "s3://bucket/key",
        "http://127.0.0.1/x",
        "/plain/path",
        "file://relative/without/dot",
        "gs://",
        "gs://Upper_Case",
        "gs://bucket//double",
        "gs://bucket/../up",
    ],
)
def test_unsupported_urls_raise_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="blob URL"):
        open_blob_store(url)


# Cloud Storage


def test_gcs_keys_live_under_the_url_prefix(gcs_bucket: str, gcs_client: storage.Client) -> None:
    store = open_blob_store(f"gs://{gcs_bucket}/tenant-a/")
    store.put("x/1.txt", b"1")
    gcs_client.bucket(gcs_bucket).blob("tenant-b/x/2.txt").upload_from_string(b"2")

    names = [blob.name for blob in gcs_client.list_blobs(gcs_bucket)]
    assert names == ["tenant-a/x/1.txt", "tenant-b/x/2.txt"]
    assert keys(store) == ["x/1.txt"]
    assert keys(open_blob_store(f"gs://{gcs_bucket}")) == names


def test_gcs_streams_a_50_mb_file_both_ways(gcs_bucket: str, tmp_path: Path) -> None:
    store = open_blob_store(f"gs://{gcs_bucket}")
    source = tmp_path / "big.bin"
    expected = hashlib.sha256()
    with source.open("wb") as out:
        for _ in range(50):
            chunk = os.urandom(MiB)
            expected.update(chunk)
            out.write(chunk)

    with source.open("rb") as stream:
        info = store.put("exports/big.bin", stream, content_type="application/octet-stream")

    assert info.size == 50 * MiB
    actual = hashlib.sha256()
    with store.open("exports/big.bin") as reader:
        while chunk := reader.read(MiB):
            actual.update(chunk)
    assert actual.hexdigest() == expected.hexdigest()


def test_gcs_signed_url_is_v4_signed_with_the_service_account_key(
    gcs_bucket: str, gcs_emulator: str, service_account_file: Path
) -> None:
    store = open_blob_store(
        f"gs://{gcs_bucket}/p", gcs_signing_credentials_file=str(service_account_file)
    )
    store.put("models/m 1.tflite", b"signed bytes")

    url = store.download_url("models/m 1.tflite", expires_in=timedelta(minutes=5))

    assert url is not None
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == gcs_emulator
    assert parts.path == f"/{gcs_bucket}/p/models/m%201.tflite"
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["300"]
    assert query["X-Goog-Credential"][0].startswith("signer@test-project.iam.")
    # The emulator serves signed URLs without checking them, so check the signature here.
    key = json.loads(service_account_file.read_text())["private_key"]
    _verify_v4_signature(url, _public_key(key))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"signed bytes"


def test_gcs_signed_url_without_a_key_names_the_setting(gcs_bucket: str) -> None:
    store = open_blob_store(f"gs://{gcs_bucket}")

    with pytest.raises(SigningNotConfigured, match="EDGE_AUTOML_GCS_SIGNING_CREDENTIALS_FILE"):
        store.download_url("any", expires_in=timedelta(minutes=5))


def test_gcs_unreadable_signing_key_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="EDGE_AUTOML_GCS_SIGNING_CREDENTIALS_FILE"):
        open_blob_store("gs://bucket", gcs_signing_credentials_file=str(tmp_path / "none.json"))


class _Trickle(io.RawIOBase):
    """Like a pipe or a socket: cannot seek or tell, and returns at most ``step`` bytes a read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        n = self._step if size is None or size < 0 else min(size, self._step)
        chunk, self._data = bytes(self._data[:n]), self._data[n:]
        return chunk


class _FailingStream(io.RawIOBase):
    """Yields full chunks, then fails like a dropped upload connection."""

    def __init__(self, chunks: int) -> None:
        self._left = chunks

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._left == 0:
            raise OSError("connection lost")
        self._left -= 1
        return b"n" * (size if size and size > 0 else 1024)


def _public_key(private_pem: str) -> rsa.RSAPublicKey:
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    return private.public_key()


def _verify_v4_signature(url: str, public_key: rsa.RSAPublicKey) -> None:
    """Rebuild the V4 string-to-sign from the URL and check it against X-Goog-Signature."""
    parts = urlsplit(url)
    pairs = [pair for pair in parts.query.split("&") if not pair.startswith("X-Goog-Signature=")]
    signature = parse_qs(parts.query)["X-Goog-Signature"][0]
    canonical_request = "\n".join(
        [
            "GET",
            parts.path,
            "&".join(sorted(pairs)),
            f"host:{parts.netloc}\n",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    query = parse_qs(parts.query)
    scope = query["X-Goog-Credential"][0].split("/", 1)[1]
    string_to_sign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            query["X-Goog-Date"][0],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    public_key.verify(
        bytes.fromhex(signature), string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
    )


def test_a_signed_cloud_storage_url_names_its_bucket_and_object(
    service_account_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    signer = service_account.Credentials.from_service_account_file(str(service_account_file))
    client = storage.Client(credentials=AnonymousCredentials(), project="test-project")
    blob = client.bucket("models-bucket").blob("Firebase/ML/my model ü.tflite")
    for hosted in (False, True):
        url = blob.generate_signed_url(
            version="v4",
            expiration=timedelta(minutes=10),
            credentials=signer,
            virtual_hosted_style=hosted,
        )
        assert object_of_url(url) == ("models-bucket", "Firebase/ML/my model ü.tflite")


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/bucket/object",
        "http://storage.googleapis.com/bucket/object",
        "https://storage.googleapis.com:8443/bucket/object",
        "https://user@storage.googleapis.com/bucket/object",
        "https://storage.googleapis.com/bucket-only",
        "https://storage.googleapis.com/bucket/folder/",
        "https://storage.googleapis.com/Not_A_Bucket/object",
        "http://127.0.0.1:9/bucket/object",
        "gs://bucket/object",
    ],
)
def test_other_urls_name_no_cloud_storage_object(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9023")
    assert object_of_url(url) is None


def test_the_emulator_named_in_the_environment_is_a_storage_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "http://127.0.0.1:9023/bucket/a%20b.tflite?X-Goog-Signature=00"
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    assert object_of_url(url) is None
    for emulator in ("http://127.0.0.1:9023", "127.0.0.1:9023"):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
        assert object_of_url(url) == ("bucket", "a b.tflite")

"""The mobile download: Firebase ML's :download call, A/B splits and the signed links."""

from __future__ import annotations

import hashlib
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.auth import service as auth_service
from app.delivery.links import SIGNING_KEY_BLOB, LinkClaims, SignerSource
from app.kit.blobs import open_blob_store
from app.kit.clock import utcnow
from app.main import create_app
from tests.delivery.conftest import add_model, add_version, publish, tflite_bytes

RFC3339_MILLIS = "%Y-%m-%dT%H:%M:%S.%fZ"


def download(client: TestClient, name: str = "detector", **kwargs):  # type: ignore[no-untyped-def]
    return client.get(f"/v1/models/{name}:download", **kwargs)


def fetch(client: TestClient, uri: str):  # type: ignore[no-untyped-def]
    """GET a downloadUri this service signed (the client sends no API key)."""
    parts = urlsplit(uri)
    assert f"{parts.scheme}://{parts.netloc}" == str(client.base_url)
    return client.get(parts.path)


def published_model(client: TestClient, session_factory, *versions: int) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    """A model named "detector" with these versions, the last one published alone."""
    model_id = add_model(session_factory)
    hashes = {
        v: add_version(session_factory, client.app.state.blobs, model_id, v, tflite_bytes(v))
        for v in versions
    }
    publish(session_factory, model_id, {str(versions[-1]): 100})
    return model_id, hashes


def expired_and_tampered_links(client: TestClient, uri: str) -> Iterator[tuple[str, str]]:
    token = urlsplit(uri).path.rsplit("/", 1)[1]
    payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    yield "signature", f"{payload}.{flipped}"
    # A later expiry under the old signature: the third character spans the expiry's first
    # two bytes (the first byte is the format).
    other = payload[:2] + ("A" if payload[2] != "A" else "B") + payload[3:]
    yield "payload", f"{other}.{signature}"
    yield "no signature", payload
    yield "garbage", "not-a-token"


# -- the must-show ------------------------------------------------------------------


def test_download_then_304_then_a_new_version_then_the_bytes(client, session_factory):
    model_id, hashes = published_model(client, session_factory, 1)

    first = download(client)
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == f'"{hashes[1]}"'
    assert first.headers["cache-control"] == "private, max-age=0, must-revalidate"
    body = first.json()
    assert body == {
        "downloadUri": body["downloadUri"],
        "expireTime": body["expireTime"],
        "sizeBytes": str(len(tflite_bytes(1))),
        "modelFormat": "TFLITE",
        "modelHash": hashes[1],
        "modelVersion": 1,
    }
    expires = datetime.strptime(body["expireTime"], RFC3339_MILLIS).replace(tzinfo=UTC)
    assert timedelta(minutes=59) < expires - utcnow() <= timedelta(hours=1)

    # The app now holds version 1: Firebase's SDK sends the bare hash, others the ETag.
    for current in (hashes[1], f'"{hashes[1]}"', f'W/"{hashes[1]}", "other"'):
        again = download(client, headers={"If-None-Match": current})
        assert again.status_code == 304, current
        assert again.headers["etag"] == f'"{hashes[1]}"'
        assert again.content == b""

    hashes[2] = add_version(session_factory, client.app.state.blobs, model_id, 2, tflite_bytes(2))
    publish(session_factory, model_id, {"2": 100})
    newer = download(client, headers={"If-None-Match": hashes[1]})
    assert newer.status_code == 200
    assert newer.headers["etag"] == f'"{hashes[2]}"'
    assert (newer.json()["modelHash"], newer.json()["modelVersion"]) == (hashes[2], 2)

    file = fetch(client, newer.json()["downloadUri"])
    assert file.status_code == 200
    assert file.content == tflite_bytes(2)
    assert file.headers["content-type"] == "application/octet-stream"
    assert file.headers["content-length"] == str(len(tflite_bytes(2)))
    assert file.headers["etag"] == f'"{hashes[2]}"'
    # A link handed out before the new version still serves the file it names.
    assert fetch(client, body["downloadUri"]).content == tflite_bytes(1)


def test_expired_and_tampered_links_are_403(client, session_factory):
    published_model(client, session_factory, 1)
    uri = download(client).json()["downloadUri"]
    assert fetch(client, uri).status_code == 200

    for what, token in expired_and_tampered_links(client, uri):
        refused = client.get(f"/v1/downloads/{token}")
        assert refused.status_code == 403, what
        error = refused.json()["error"]
        assert error["status"] == "PERMISSION_DENIED", what
        assert "not valid" in error["message"], what

    # A replica that shares the blob store signs with the same stored key.
    blobs = client.app.state.blobs
    signer = SignerSource(blobs, None).get()
    claims = signer.verify(urlsplit(uri).path.rsplit("/", 1)[1], now=utcnow())
    expired = signer.sign(
        LinkClaims(claims.blob_key, claims.sha256, utcnow().replace(microsecond=0))
    )
    refused = client.get(f"/v1/downloads/{expired}")
    assert refused.status_code == 403
    assert refused.json()["error"]["status"] == "PERMISSION_DENIED"
    assert "expired" in refused.json()["error"]["message"]


def test_unknown_or_unpublished_names_are_404(client, session_factory):
    model_id, _ = published_model(client, session_factory, 1)
    never = add_model(session_factory, name="never-published")
    add_version(session_factory, client.app.state.blobs, never, 1, tflite_bytes(1))

    for name in ("nope", "never-published", model_id):
        missing = download(client, name)
        assert missing.status_code == 404, name
        assert missing.json()["error"]["status"] == "NOT_FOUND"
        assert name in missing.json()["error"]["message"]

    publish(session_factory, model_id, None)  # unpublished
    assert download(client).status_code == 404


def test_colon_route_wins_over_the_model_route(client, session_factory):
    model_id, _ = published_model(client, session_factory, 1)
    assert client.get(f"/v1/models/{model_id}").json()["id"] == model_id
    assert download(client).json()["modelVersion"] == 1


def test_the_latest_published_of_two_same_named_models_is_served(client, session_factory):
    old_id, old = published_model(client, session_factory, 1)
    new_id = add_model(session_factory)
    new_hash = add_version(session_factory, client.app.state.blobs, new_id, 1, tflite_bytes(9))
    publish(session_factory, new_id, {"1": 100})
    publish(session_factory, old_id, {"1": 100}, at=utcnow() - timedelta(days=1))
    assert download(client).json()["modelHash"] == new_hash != old[1]


# -- A/B splits -----------------------------------------------------------------------------


def test_an_even_split_serves_each_installation_one_side_stably(client, session_factory):
    model_id, hashes = published_model(client, session_factory, 1, 2)
    publish(session_factory, model_id, {"1": 50, "2": 50})

    chosen = {}
    for n in range(200):
        answer = download(client, params={"installationId": f"fid-{n}"})
        assert answer.status_code == 200
        chosen[n] = answer.json()["modelVersion"]
        assert answer.json()["modelHash"] == hashes[chosen[n]]
    counts = Counter(chosen.values())
    assert 70 <= counts[1] <= 130 and 70 <= counts[2] <= 130, counts

    for n in range(0, 200, 10):
        again = download(client, params={"installationId": f"fid-{n}"})
        assert again.json()["modelVersion"] == chosen[n]
        assert download(client, params={"variant": f"fid-{n}"}).json()["modelVersion"] == chosen[n]
        # Current on its own side: 304; the other side's hash is not current for it.
        own, other = hashes[chosen[n]], hashes[3 - chosen[n]]
        params = {"installationId": f"fid-{n}"}
        assert download(client, params=params, headers={"If-None-Match": own}).status_code == 304
        stale = download(client, params=params, headers={"If-None-Match": other})
        assert stale.status_code == 200 and stale.json()["modelHash"] == own


def test_without_an_installation_the_heavier_side_is_served(client, session_factory):
    model_id, _ = published_model(client, session_factory, 1, 2)
    publish(session_factory, model_id, {"1": 80, "2": 20})
    assert download(client).json()["modelVersion"] == 1
    publish(session_factory, model_id, {"1": 50, "2": 50})
    assert download(client).json()["modelVersion"] == 2  # a tie goes to the newer


def test_installation_and_variant_must_agree(client, session_factory):
    published_model(client, session_factory, 1)
    answer = download(client, params={"installationId": "a", "variant": "b"})
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    agreed = download(client, params={"installationId": "a", "variant": "a"})
    assert agreed.status_code == 200


# -- auth, settings, replicas ---------------------------------------------------------------


def test_api_key_in_x_goog_api_key_and_links_need_none(client, session_factory):
    published_model(client, session_factory, 1)
    with session_factory.begin() as session:
        _, secret = auth_service.create(session, display_name="app", scopes=["read"])

    assert download(client).status_code == 401
    answer = download(client, headers={"x-goog-api-key": secret})
    assert answer.status_code == 200
    assert fetch(client, answer.json()["downloadUri"]).content == tflite_bytes(1)


def test_public_url_and_link_lifetime_come_from_the_settings(client, session_factory, settings):
    published_model(client, session_factory, 1)
    client.app.state.settings = settings.model_copy(
        update={"public_url": "https://ml.example.com/edge", "download_link_ttl_seconds": 120}
    )
    body = download(client).json()
    assert body["downloadUri"].startswith("https://ml.example.com/edge/v1/downloads/")
    expires = datetime.strptime(body["expireTime"], RFC3339_MILLIS).replace(tzinfo=UTC)
    assert timedelta(seconds=115) < expires - utcnow() <= timedelta(seconds=120)


def test_replicas_share_the_stored_key_and_a_configured_key_wins(
    client, session_factory, settings, engine
):
    published_model(client, session_factory, 1)
    uri = download(client).json()["downloadUri"]
    blobs = client.app.state.blobs
    assert len(blobs.get(SIGNING_KEY_BLOB)) == 32

    with TestClient(create_app(settings, engine=engine)) as replica:
        assert fetch(replica, uri).content == tflite_bytes(1)

    configured = settings.model_copy(update={"download_signing_key": SecretStr("k" * 40)})
    with TestClient(create_app(configured, engine=engine)) as other:
        assert fetch(other, uri).status_code == 403  # signed with the stored key
        own = download(other).json()["downloadUri"]
        assert fetch(other, own).content == tflite_bytes(1)
    assert fetch(client, own).status_code == 403


# -- Cloud Storage --------------------------------------------------------------------------


@pytest.fixture
def gcs_signed_client(
    settings, engine, session_factory, gcs_bucket: str, service_account_file: Path
) -> Iterator[TestClient]:
    blobs = open_blob_store(
        f"gs://{gcs_bucket}/store", gcs_signing_credentials_file=service_account_file
    )
    with TestClient(create_app(settings, engine=engine, blobs=blobs)) as client:
        yield client


def test_cloud_storage_gives_a_v4_signed_url(gcs_signed_client, session_factory, gcs_emulator):
    client = gcs_signed_client
    published_model(client, session_factory, 1)
    body = download(client).json()
    parts = urlsplit(body["downloadUri"])
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == gcs_emulator
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["3600"]
    assert query["X-Goog-Signature"][0]
    # The emulator does not check signatures (tests/kit/test_blobs.py checks ours): the file.
    with urllib.request.urlopen(body["downloadUri"], timeout=10) as response:
        data = response.read()
    assert data == tflite_bytes(1)
    assert hashlib.sha256(data).hexdigest() == body["modelHash"]
    assert not client.app.state.blobs.exists(SIGNING_KEY_BLOB)  # no link of ours was made


def test_cloud_storage_without_a_signing_key_falls_back_to_our_links(
    settings, engine, session_factory, gcs_bucket
):
    blobs = open_blob_store(f"gs://{gcs_bucket}/store")
    with TestClient(create_app(settings, engine=engine, blobs=blobs)) as client:
        published_model(client, session_factory, 1)
        uri = download(client).json()["downloadUri"]
        assert "/v1/downloads/" in uri
        assert fetch(client, uri).content == tflite_bytes(1)
        assert len(blobs.get(SIGNING_KEY_BLOB)) == 32


def test_firebase_mls_own_path_answers_the_same_for_any_project(client, session_factory):
    model_id, hashes = published_model(client, session_factory, 1)
    native = download(client, params={"installationId": "phone-1"})
    path = "/v1beta2/projects/my-firebase-project/models/detector:download"
    firebase = client.get(path, params={"installationId": "phone-1"})
    assert firebase.status_code == 200, firebase.text
    assert firebase.headers["ETag"] == native.headers["ETag"] == f'"{hashes[1]}"'
    assert firebase.json()["modelHash"] == hashes[1]
    assert fetch(client, firebase.json()["downloadUri"]).content == tflite_bytes(1)
    current = client.get(path, headers={"If-None-Match": hashes[1]})
    assert current.status_code == 304
    assert client.get(path.replace("detector", "nobody")).status_code == 404
    # The model route of the Firebase API does not swallow the colon method.
    model = client.get(f"/v1beta2/projects/my-firebase-project/models/{model_id}").json()
    assert model["displayName"] == "detector"

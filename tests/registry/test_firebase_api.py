"""Firebase ML's API, driven by the real firebase-admin SDK over HTTP against a running server.

The SDK is pointed here through its two base URLs. Its credential is a service-account key
made in the test, whose token endpoint is a stand-in handing out one of our API keys as the
access token, so every call is authenticated as a Firebase script's would be. Files sit in the
Cloud Storage emulator, and the SDK signs their gs:// URIs before sending them, as it does
against Google.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import firebase_admin
import google.auth.credentials
import google.oauth2.credentials
import httpx
import pytest
from firebase_admin import credentials, exceptions, ml
from google.cloud import storage
from google.oauth2 import service_account
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth_service
from app.detector.tflite import LABEL_FILE
from tests.fixtures.gcs import write_service_account_file
from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.filterwarnings("ignore:Firebase ML is deprecated:DeprecationWarning")

PROJECT = "demo-project"


class TokenEndpoint:
    """Google's OAuth token endpoint, stood in for: any assertion gets ``token``."""

    def __init__(self) -> None:
        self.token = ""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps(
                    {"access_token": endpoint.token, "expires_in": 3600, "token_type": "Bearer"}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.close()


@dataclass
class Firebase:
    """One firebase-admin app pointed at one server, and the bucket its files go in."""

    app: firebase_admin.App
    server: LiveServer
    bucket: storage.Bucket
    key: str

    def upload(self, name: str, data: bytes) -> str:
        self.bucket.blob(name).upload_from_string(data)
        return f"gs://{self.bucket.name}/{name}"

    def tflite(self, uri: str) -> ml.TFLiteFormat:
        return ml.TFLiteFormat(
            model_source=ml.TFLiteGCSModelSource(gcs_tflite_uri=uri, app=self.app)
        )

    def create(self, display_name: str, data: bytes, tags: list[str] | None = None) -> ml.Model:
        uri = self.upload(f"uploads/{uuid.uuid4().hex}.tflite", data)
        model = ml.Model(display_name=display_name, tags=tags, model_format=self.tflite(uri))
        return ml.create_model(model, app=self.app)

    def http(self, key: str | None = None) -> httpx.Client:
        """A plain HTTP client on the server, with our API key (or ``key``)."""
        token = self.key if key is None else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30)

    def native(self, model_id: str) -> dict[str, Any]:
        with self.http() as client:
            response = client.get(f"/v1/models/{model_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


def make_key(session_factory: sessionmaker[Session], scope: str) -> str:
    with session_factory.begin() as session:
        _, secret = auth_service.create(session, display_name=f"{scope} key", scopes=[scope])
    return secret


@pytest.fixture
def start_firebase(
    live_server_factory: Callable[..., LiveServer],
    session_factory: sessionmaker[Session],
    gcs_client: storage.Client,
    gcs_bucket: str,
    token_endpoint: TokenEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Firebase]]:
    """Start a firebase-admin app whose ML calls go to a server (a new one unless given; keys
    are required, one with write scope exists) and whose storage calls go to the emulator."""
    apps: list[firebase_admin.App] = []
    key = make_key(session_factory, "write")
    token_endpoint.token = key
    key_file = write_service_account_file(
        tmp_path / "firebase-sa.json", project_id=PROJECT, token_uri=token_endpoint.url
    )
    monkeypatch.setattr(ml._MLService, "POLL_BASE_WAIT_TIME_SECONDS", 0.1)

    def start(
        *,
        credential: credentials.Base | None = None,
        default_app: bool = False,
        server: LiveServer | None = None,
        **server_env: str,
    ) -> Firebase:
        server = server or live_server_factory("--no-worker", **server_env)
        monkeypatch.setattr(ml._MLService, "PROJECT_URL", f"{server.url}/v1beta2/projects/{{0}}/")
        monkeypatch.setattr(ml._MLService, "OPERATION_URL", f"{server.url}/v1beta2/")
        app = firebase_admin.initialize_app(
            credential or credentials.Certificate(str(key_file)),
            {"projectId": PROJECT, "storageBucket": gcs_bucket},
            name=firebase_admin._DEFAULT_APP_NAME if default_app else f"test-{uuid.uuid4().hex}",
        )
        apps.append(app)
        return Firebase(app=app, server=server, bucket=gcs_client.bucket(gcs_bucket), key=key)

    yield start
    for app in apps:
        firebase_admin.delete_app(app)


@pytest.fixture
def firebase(start_firebase: Callable[..., Firebase]) -> Firebase:
    return start_firebase()


class ApiKeyCredential(credentials.Base):
    """The README's recipe: our API key as the access token, with a service-account key to
    sign gs:// URIs where the script creates or updates models from Cloud Storage."""

    def __init__(self, api_key: str, key_file: Path | None = None) -> None:
        if key_file is None:
            self._credential: google.auth.credentials.Credentials = (
                google.oauth2.credentials.Credentials(token=api_key)
            )
        else:
            signer = service_account.Credentials.from_service_account_file(str(key_file))
            signer.token = api_key  # never expires, so never refreshed from Google
            self._credential = signer

    def get_credential(self) -> google.auth.credentials.Credentials:
        return self._credential


def without_archive(data: bytes) -> bytes:
    """The flatbuffer without the zip of associated files (the label map) appended to it."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        start = min(info.header_offset for info in archive.infolist())
    return data[:start]


def relabelled(data: bytes, labels: list[str]) -> bytes:
    """Another valid detector file: the same network with other label names."""
    out = io.BytesIO(without_archive(data))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr(LABEL_FILE, "".join(f"{label}\n" for label in labels))
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_sdk_creates_reads_updates_publishes_and_deletes_a_model(
    firebase: Firebase, float_tflite: bytes
) -> None:
    app = firebase.app
    before = time.time() * 1000
    created = firebase.create("detector", float_tflite, tags=["b", "a"])
    assert created.display_name == "detector" and sorted(created.tags) == ["a", "b"]
    assert not created.published and created.validation_error is None
    assert created.model_hash == sha256(float_tflite)
    assert created.model_format.size_bytes == str(len(float_tflite))
    # A local blob store has no gs:// URI to show (the SDK refuses any other form).
    assert created.model_format.model_source is None
    assert before - 1000 <= created.create_time <= time.time() * 1000
    assert created.etag and not created.locked
    model_id = created.model_id

    assert ml.get_model(model_id, app=app) == created

    created.display_name = "detector_v2"
    created.tags = ["c"]
    updated = ml.update_model(created, app=app)
    assert (updated.model_id, updated.display_name, updated.tags) == (
        model_id,
        "detector_v2",
        ["c"],
    )
    assert updated.etag != created.etag and updated.update_time >= created.update_time
    assert updated.model_hash == created.model_hash  # the file sent back is the one it has
    assert firebase.native(model_id)["latestVersion"] == 1

    published = ml.publish_model(model_id, app=app)
    assert published.published and ml.get_model(model_id, app=app).published
    with firebase.http() as client:
        download = client.get("/v1/models/detector_v2:download")
        assert download.status_code == 200, download.text
        assert download.json()["modelHash"] == sha256(float_tflite)

        assert not ml.unpublish_model(model_id, app=app).published
        assert client.get("/v1/models/detector_v2:download").status_code == 404

    ml.publish_model(model_id, app=app)
    ml.delete_model(model_id, app=app)  # published models too, as Firebase ML allows
    with pytest.raises(exceptions.NotFoundError, match=model_id):
        ml.get_model(model_id, app=app)


def test_the_sdk_lists_models_with_filters_and_pages(
    firebase: Firebase, float_tflite: bytes
) -> None:
    app = firebase.app
    specs = {
        "alpha": ["x", "y"],
        "beta": ["x"],
        "gamma": ["y"],
        "delta_1": ["x", "y"],
        "delta_2": [],
    }
    ids = {name: firebase.create(name, float_tflite, tags).model_id for name, tags in specs.items()}
    ml.publish_model(ids["beta"], app=app)

    def names(list_filter: str) -> set[str]:
        page = ml.list_models(list_filter=list_filter, app=app)
        assert not page.has_next_page
        return {model.display_name for model in page.models}

    assert names("display_name=alpha") == {"alpha"}
    assert names("tags: x AND tags: y") == {"alpha", "delta_1"}
    assert names("state.published = true") == {"beta"}
    assert names("display_name : delta*") == {"delta_1", "delta_2"}

    first = ml.list_models(page_size=2, app=app)
    assert len(first.models) == 2 and first.has_next_page
    newest_first = [model.display_name for model in first.iterate_all()]
    assert newest_first == list(reversed(specs))
    listed = {m.model_id: m for m in ml.list_models(app=app).iterate_all()}
    assert listed[ids["beta"]].published and listed[ids["alpha"]].tags == ["x", "y"]
    assert listed[ids["delta_2"]].tags is None  # proto3 JSON leaves empty lists out

    # Google's own spelling, camelCase, pages the same way.
    with firebase.http() as client:
        url = f"/v1beta2/projects/{PROJECT}/models"
        page = client.get(url, params={"pageSize": 3}).json()
        rest = client.get(url, params={"pageSize": 3, "pageToken": page["nextPageToken"]}).json()
    assert [m["displayName"] for m in page["models"] + rest["models"]] == newest_first
    assert "nextPageToken" not in rest
    assert page["models"][0]["name"] == f"projects/{PROJECT}/models/{ids['delta_2']}"


def test_errors_reach_the_sdk_as_its_exception_types(
    firebase: Firebase, float_tflite: bytes, session_factory: sessionmaker[Session]
) -> None:
    app = firebase.app
    with pytest.raises(exceptions.NotFoundError, match="'nosuchmodel' not found"):
        ml.get_model("nosuchmodel", app=app)
    with pytest.raises(exceptions.InvalidArgumentError, match="filter"):
        ml.list_models(list_filter="tags: a AND", app=app)
    missing = f"gs://{firebase.bucket.name}/missing.tflite"
    with pytest.raises(exceptions.InvalidArgumentError, match=f"{missing}: not found"):
        ml.create_model(
            ml.Model(display_name="lost", model_format=firebase.tflite(missing)), app=app
        )

    url = f"/v1beta2/projects/{PROJECT}/models"
    signed = (
        f"{firebase.bucket.name}/x.tflite?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=ab"
    )
    with firebase.http() as client:
        for uri in (
            "https://example.com/model.tflite",
            f"https://storage.example.com/{signed}",
            f"http://storage.googleapis.com/{signed}",  # plain http is only the emulator's
            f"{firebase.server.url}/{signed}",  # this server is no storage host
            "/etc/passwd",
        ):
            body = {"displayName": "ssrf", "tfliteModel": {"gcsTfliteUri": uri}}
            response = client.post(url, json=body)
            assert response.status_code == 400, (uri, response.text)
            error = response.json()["error"]
            assert error["status"] == "INVALID_ARGUMENT"
            [violation] = error["details"][0]["fieldViolations"]
            assert violation["field"] == "tfliteModel.gcsTfliteUri"
        automl = client.post(
            url, json={"displayName": "automl", "tfliteModel": {"automlModel": "projects/p/m"}}
        )
        assert automl.status_code == 400 and "automlModel" in automl.json()["error"]["message"]
        bad_project = client.get("/v1beta2/projects/Not_A_Project/models")
        assert bad_project.status_code == 400
        assert "project" in bad_project.json()["error"]["message"]
        bad_mask = client.patch(f"{url}/x?updateMask=modelHash", json={})
        assert bad_mask.status_code == 400 and "modelHash" in bad_mask.text

    with firebase.http(key="") as anonymous:
        assert anonymous.get(url).status_code == 401
    with firebase.http(key=make_key(session_factory, "read")) as reader:
        assert reader.get(url).status_code == 200
        denied = reader.post(
            url, json={"displayName": "x", "tfliteModel": {"gcsTfliteUri": missing}}
        )
        assert denied.status_code == 403 and denied.json()["error"]["status"] == "PERMISSION_DENIED"


def test_a_file_that_fails_the_checks_makes_a_model_that_cannot_be_published(
    firebase: Firebase, float_tflite: bytes
) -> None:
    broken = firebase.create("no_labels", without_archive(float_tflite))
    assert broken.validation_error is not None
    assert f"label file {LABEL_FILE}" in broken.validation_error
    assert broken.model_hash == sha256(without_archive(float_tflite))
    with pytest.raises(exceptions.FailedPreconditionError, match="cannot be published"):
        ml.publish_model(broken.model_id, app=firebase.app)
    assert not ml.get_model(broken.model_id, app=firebase.app).published


def test_a_new_file_is_a_new_version_that_a_published_model_serves(
    firebase: Firebase, float_tflite: bytes
) -> None:
    app = firebase.app
    model = firebase.create("swapped", float_tflite)
    ml.publish_model(model.model_id, app=app)
    other = relabelled(float_tflite, ["cat", "dog", "bird"])

    model.model_format = firebase.tflite(firebase.upload("next.tflite", other))
    updated = ml.update_model(model, app=app)
    assert updated.model_hash == sha256(other) and updated.published
    native = firebase.native(model.model_id)
    assert (native["latestVersion"], native["publishedVersion"]) == (2, 2)
    assert native["labels"] == ["cat", "dog", "bird"]

    # The same file again, even from another object, is no new version.
    model.model_format = firebase.tflite(firebase.upload("again.tflite", other))
    ml.update_model(model, app=app)
    assert firebase.native(model.model_id)["latestVersion"] == 2

    # A file that fails the checks becomes a version, but apps keep the one they have.
    model.model_format = firebase.tflite(firebase.upload("bad.tflite", without_archive(other)))
    failed = ml.update_model(model, app=app)
    assert failed.published and failed.validation_error is not None
    assert failed.model_hash == sha256(other)
    native = firebase.native(model.model_id)
    assert (native["latestVersion"], native["publishedVersion"]) == (3, 2)


def test_a_model_is_locked_while_an_operation_runs_and_the_sdk_waits_for_it(
    firebase: Firebase, float_tflite: bytes, run_jobs: Callable[[], int]
) -> None:
    app = firebase.app
    model_id = firebase.create("locked", float_tflite).model_id
    with firebase.http() as client:
        export = client.post(f"/v1/models/{model_id}:export", json={"format": "tflite"})
        assert export.status_code == 200, export.text
        operation_id = export.json()["id"]
        model = ml.get_model(model_id, app=app)
        assert model.locked
        name = f"projects/{PROJECT}/operations/{operation_id}"
        assert model._data["activeOperations"] == [{"name": name}]
        running = client.get(f"/v1beta2/{name}").json()
        assert running == {
            "name": name,
            "metadata": {
                "@type": "type.googleapis.com/google.firebase.ml.v1beta2.ModelOperationMetadata",
                "name": f"projects/{PROJECT}/models/{model_id}",
            },
            "done": False,
        }
        legacy = f"/v1beta2/operations/project/{PROJECT}/model/{model_id}/operation/{operation_id}"
        assert client.get(legacy).json() == running
        assert client.get(legacy.replace(model_id, "another")).status_code == 404
        with pytest.raises(exceptions.AbortedError, match="locked"):
            ml.publish_model(model_id, app=app)

        worker = threading.Timer(0.5, run_jobs)
        worker.start()
        model.wait_for_unlocked(max_time_seconds=60)
        worker.join()
        assert not model.locked and model.model_hash == sha256(float_tflite)
        done = client.get(f"/v1beta2/{name}").json()
        assert done["done"] and done["response"]["name"] == f"projects/{PROJECT}/models/{model_id}"
        assert "activeOperations" not in done["response"]
    assert ml.publish_model(model_id, app=app).published


def test_a_cloud_storage_blob_store_shows_the_files_gs_uri(
    start_firebase: Callable[..., Firebase], float_tflite: bytes, gcs_bucket: str
) -> None:
    # The default app: the SDK signs the gs:// URI of a model it read with that one.
    firebase = start_firebase(default_app=True, EDGE_AUTOML_BLOB_URL=f"gs://{gcs_bucket}/store")
    model = firebase.create("stored", float_tflite)
    uri = model.model_format.model_source.gcs_tflite_uri
    prefix = f"gs://{gcs_bucket}/store/models/{model.model_id}/"
    assert uri.startswith(prefix)
    stored = firebase.bucket.blob(uri.removeprefix(f"gs://{gcs_bucket}/")).download_as_bytes()
    assert stored == float_tflite

    # The SDK sends the model back with that file, signed: no new version comes of it.
    model.display_name = "stored_renamed"
    renamed = ml.update_model(model, app=firebase.app)
    assert renamed.display_name == "stored_renamed"
    assert renamed.model_format.model_source.gcs_tflite_uri == uri
    assert firebase.native(model.model_id)["latestVersion"] == 1


def test_an_api_key_credential_needs_no_token_endpoint(
    start_firebase: Callable[..., Firebase],
    float_tflite: bytes,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    key_file = write_service_account_file(tmp_path / "signer.json", project_id=PROJECT)
    writer = start_firebase(
        credential=ApiKeyCredential(make_key(session_factory, "write"), key_file)
    )
    model = writer.create("keyed", float_tflite)
    assert ml.publish_model(model.model_id, app=writer.app).published

    reader = start_firebase(
        credential=ApiKeyCredential(make_key(session_factory, "read")), server=writer.server
    )
    assert ml.get_model(model.model_id, app=reader.app).published
    assert [m.model_id for m in ml.list_models(app=reader.app).iterate_all()] == [model.model_id]
    with pytest.raises(exceptions.PermissionDeniedError, match="'read'"):
        ml.unpublish_model(model.model_id, app=reader.app)

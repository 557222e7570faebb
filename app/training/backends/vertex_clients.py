"""Vertex AI and Cloud Storage clients for the remote backends, built from the settings.

The GAPIC v1 clients (not the high-level SDK, whose ``run`` blocks until training ends):
``client_options={"api_endpoint": ...}`` and ``transport`` from the settings, so that tests
point the real client at a local stand-in. Credentials: anonymous for a stand-in (an
``http://`` endpoint, or one on a loopback address), else the configured key file, else
Application Default Credentials.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials

from app.config import Settings

if TYPE_CHECKING:
    import google.cloud.storage as storage
    from google.cloud import aiplatform_v1

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Where every file of one training job goes in the staging bucket.
STAGING_FOLDER = "edge-automl"


def api_endpoint(settings: Settings) -> str:
    return settings.vertex_api_endpoint or f"{settings.vertex_location}-aiplatform.googleapis.com"


def is_stand_in(endpoint: str) -> bool:
    """A local stand-in of Vertex AI: plain HTTP, or a loopback host (the TLS test server)."""
    if endpoint.startswith("http://"):
        return True
    host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials(settings: Settings) -> Credentials:
    if is_stand_in(api_endpoint(settings)):
        return AnonymousCredentials()
    if settings.vertex_credentials_file is not None:
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_file(
            str(settings.vertex_credentials_file), scopes=[CLOUD_PLATFORM_SCOPE]
        )
    import google.auth

    found, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    return found


class VertexClients:
    """The four GAPIC clients of one configuration, each made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.project = settings.vertex_project
        self.location = settings.vertex_location
        self.transport = settings.vertex_api_transport
        self.endpoint = api_endpoint(settings)

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def _options(self) -> dict[str, Any]:
        return {
            "credentials": credentials(self.settings),
            "transport": self.transport,
            "client_options": {"api_endpoint": self.endpoint},
        }

    @cached_property
    def dataset(self) -> aiplatform_v1.DatasetServiceClient:
        from google.cloud import aiplatform_v1

        return aiplatform_v1.DatasetServiceClient(**self._options())

    @cached_property
    def pipeline(self) -> aiplatform_v1.PipelineServiceClient:
        from google.cloud import aiplatform_v1

        return aiplatform_v1.PipelineServiceClient(**self._options())

    @cached_property
    def model(self) -> aiplatform_v1.ModelServiceClient:
        from google.cloud import aiplatform_v1

        return aiplatform_v1.ModelServiceClient(**self._options())

    @cached_property
    def job(self) -> aiplatform_v1.JobServiceClient:
        from google.cloud import aiplatform_v1

        return aiplatform_v1.JobServiceClient(**self._options())

    @cached_property
    def storage(self) -> storage.Client:
        return storage_client(self.settings)


_clients: dict[tuple[Any, ...], VertexClients] = {}
_clients_lock = threading.Lock()


def vertex_clients(settings: Settings) -> VertexClients:
    """The clients for these settings, shared by the calls of one process (a client holds a
    channel or an HTTP session: making one per poll would reconnect every time)."""
    key = (
        settings.vertex_project,
        settings.vertex_location,
        api_endpoint(settings),
        settings.vertex_api_transport,
        settings.vertex_credentials_file,
    )
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = VertexClients(settings)
        return found


# -- Cloud Storage -----------------------------------------------------------------------


def storage_client(settings: Settings) -> storage.Client:
    """A storage client for the staging bucket: the emulator's when STORAGE_EMULATOR_HOST is
    set, else the Vertex key file's, else Application Default Credentials."""
    import os

    import google.cloud.storage as storage

    from app.kit.blobs.gcs import EMULATOR_VARIABLE, make_client

    project = settings.vertex_project or settings.gcs_project
    if os.environ.get(EMULATOR_VARIABLE) or settings.vertex_credentials_file is None:
        return make_client(project)
    from google.oauth2 import service_account

    key = service_account.Credentials.from_service_account_file(
        str(settings.vertex_credentials_file), scopes=[CLOUD_PLATFORM_SCOPE]
    )
    return storage.Client(project=project, credentials=key)


@dataclass(frozen=True)
class GsUri:
    bucket: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> GsUri:
        if not uri.startswith("gs://"):
            raise ValueError(f"not a gs:// URI: {uri!r}")
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return cls(bucket, name)

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    def join(self, *parts: str) -> GsUri:
        name = "/".join(p.strip("/") for p in (self.name, *parts) if p.strip("/"))
        return GsUri(self.bucket, name)


def staging_uri(settings: Settings, training_job_id: str, *parts: str) -> str:
    """gs://{staging}/edge-automl/{trainingJobId}/{parts...}: one folder per job."""
    if settings.vertex_staging_bucket is None:
        raise ValueError("EDGE_AUTOML_VERTEX_STAGING_BUCKET is not set")
    root = GsUri.parse(settings.vertex_staging_bucket.rstrip("/") + "/")
    return str(root.join(STAGING_FOLDER, training_job_id, *parts))


def _blob(client: storage.Client, uri: str) -> storage.Blob:
    parsed = GsUri.parse(uri)
    return client.bucket(parsed.bucket).blob(parsed.name)


def read_gs(client: storage.Client, uri: str) -> bytes:
    return _blob(client, uri).download_as_bytes()


def write_gs(
    client: storage.Client, uri: str, data: bytes, *, content_type: str | None = None
) -> None:
    _blob(client, uri).upload_from_string(
        data, content_type=content_type or "application/octet-stream"
    )


def exists_gs(client: storage.Client, uri: str) -> bool:
    try:
        return bool(_blob(client, uri).exists())
    except google_exceptions.NotFound:
        return False


def list_gs(client: storage.Client, prefix_uri: str) -> Iterator[str]:
    """The gs:// URIs of the objects under a prefix."""
    parsed = GsUri.parse(prefix_uri)
    for blob in client.list_blobs(parsed.bucket, prefix=parsed.name):
        yield f"gs://{parsed.bucket}/{blob.name}"

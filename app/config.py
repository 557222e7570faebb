"""The one validated settings object, read from ``EDGE_AUTOML_*`` environment variables.

Defaults give the embedded mode: SQLite and a blob folder under ``./data``, the API on
loopback, one supervised worker. Nothing else in the code reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from app.kit.blobs import BlobStore

DEFAULT_DATA_DIR = Path("data")
# What firebase-admin accepts in resource names and gs:// URIs.
FIREBASE_PROJECT_ID = re.compile(r"[a-z0-9-]{6,30}")
FIREBASE_BUCKET = re.compile(r"[a-z0-9_.-]{3,63}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_AUTOML_", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DATA_DIR}/edge-automl.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db.",
    )
    blob_url: str = Field(
        default=f"file://./{DEFAULT_DATA_DIR}/blobs",
        description="file://DIR for a local folder, gs://bucket/prefix for Cloud Storage.",
    )
    gcs_project: str | None = None
    gcs_signing_credentials_file: Path | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    embedded_worker: bool = Field(
        default=True, description="serve also supervises one worker child process."
    )
    auth: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="auto: keys are required once any active key exists; "
        "on: always required; off: never (only allowed on a loopback address).",
    )

    max_request_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    max_json_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    default_page_size: int = Field(default=50, ge=1, le=100)

    import_root: Path | None = Field(
        default=None, description="Local folder that imports may read image and index files from."
    )
    import_allow_https: bool = Field(
        default=False, description="Allow https:// image URIs (never to private addresses)."
    )
    max_image_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    max_tflite_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1024, description="Largest .tflite file a user may upload."
    )
    max_image_pixels: int = Field(default=89_478_485, ge=1, description="Decompression-bomb guard.")
    max_boxes_per_image: int = Field(default=500, ge=1)
    max_labels: int = Field(default=1000, ge=1)
    max_archive_bytes: int = Field(
        default=20 * 1024**3, ge=1024, description="Total uncompressed size a zip may declare."
    )
    split_seed: int = Field(default=0, description="Seed of the 80/10/10 split by image.")
    import_batch_rows: int = Field(default=2000, ge=1)
    import_fetch_threads: int = Field(
        default=4, ge=1, le=64, description="Images an import reads and stores at once."
    )

    training_progress_seconds: float = Field(
        default=2.0, gt=0, description="How often a training job writes its progress."
    )
    training_max_epochs: int | None = Field(
        default=None,
        ge=1,
        description="Cap on epochs per training job (smoke tests); unset: "
        "the budget and early stopping decide.",
    )
    training_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads a training job uses; unset: the trainer's default.",
    )
    inference_threads: int = Field(
        default=2, ge=1, description="onnxruntime threads per deployed model (intra-op)."
    )
    max_deployed_models: int = Field(
        default=8, ge=1, description="Deployed models an API process keeps loaded at once."
    )
    predict_deploys_on_demand: bool = Field(
        default=False,
        description=":predict on a model that is not deployed deploys its latest ONNX file "
        "instead of answering 409.",
    )
    predict_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Predictions an API process computes at once (decode and inference); the "
        "others wait their turn in arrival order. One suits 2 cores: inference already uses "
        "inference_threads, and more at once only share the cores and stretch the slowest "
        "answers.",
    )
    predict_queue_limit: int = Field(
        default=64,
        ge=0,
        description="Predictions an API process lets wait for their turn; beyond it :predict "
        "answers 429 RESOURCE_EXHAUSTED at once, for the caller to retry.",
    )
    max_predict_instances: int = Field(
        default=16, ge=1, le=256, description="Images one :predict request may carry."
    )
    batch_prediction_max_instances: int = Field(
        default=100_000, ge=1, description="Images one batch prediction job may list."
    )
    batch_prediction_chunk_size: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Results per output file of a batch prediction job; the job records its "
        "progress, and can resume or stop on cancel, after each.",
    )
    batch_prediction_max_input_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Size limit of a batch input file."
    )

    download_signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the download links this service signs (local blob store). "
        "Unset: a random key made once and kept in the blob store, which every replica reads.",
    )
    download_link_ttl_seconds: int = Field(
        default=3600,
        ge=60,
        le=7 * 24 * 3600,
        description="How long a :download answer's downloadUri works (Firebase ML's last about "
        "an hour; Cloud Storage signs for at most 7 days).",
    )
    public_url: str | None = Field(
        default=None,
        description="The URL apps reach this service at (https://ml.example.com), for the "
        "download links it signs; unset: the request's own URL.",
    )

    firebase_mirror_project: str | None = Field(
        default=None,
        description="Firebase project that published models are mirrored to in Firebase ML "
        "(until its shutdown in June 2027); unset: no mirror.",
    )
    firebase_mirror_bucket: str | None = Field(
        default=None,
        description="Cloud Storage bucket the mirror uploads .tflite files to (under "
        "Firebase/ML/Models/); required with firebase_mirror_project.",
    )
    firebase_credentials_file: Path | None = Field(
        default=None,
        description="Service-account JSON key for the mirror (it signs the file's URL for "
        "Firebase ML, so it needs a private key); unset: Application Default Credentials.",
    )
    firebase_ml_base_url: str | None = Field(
        default=None,
        description="Base URL of the Firebase ML API (a local stand-in, say); unset: Google's.",
    )

    training_backend: Literal["local", "vertex-automl", "vertex-custom"] = Field(
        default="local",
        description="Where a training job runs unless it names its backend: local (a worker "
        "here), vertex-automl (Vertex AI AutoML) or vertex-custom (this trainer as a Vertex "
        "AI custom job).",
    )
    vertex_project: str | None = Field(
        default=None, description="Google Cloud project of the Vertex AI backends."
    )
    vertex_location: str = Field(default="us-central1", description="Vertex AI region.")
    vertex_staging_bucket: str | None = Field(
        default=None,
        description="gs://bucket[/prefix] the Vertex AI backends write images, import files, "
        "exports and custom-job outputs to (under edge-automl/{trainingJobId}/).",
    )
    vertex_service_account: str | None = Field(
        default=None,
        description="Service account e-mail the Vertex AI training runs as; unset: Vertex's "
        "default.",
    )
    vertex_api_endpoint: str | None = Field(
        default=None,
        description="Vertex AI API endpoint; unset: {location}-aiplatform.googleapis.com. "
        "http://host:port (a local stand-in) is used with anonymous credentials.",
    )
    vertex_api_transport: Literal["grpc", "rest"] = Field(
        default="grpc", description="How the Vertex AI clients talk: grpc or rest (HTTP/JSON)."
    )
    vertex_credentials_file: Path | None = Field(
        default=None,
        description="Service-account JSON key for Vertex AI; unset: Application Default "
        "Credentials.",
    )
    vertex_custom_image: str | None = Field(
        default=None,
        description="Container image URI of this project that a vertex-custom job runs "
        "(edge-automl train-job); required for vertex-custom.",
    )
    vertex_custom_machine_type: str = Field(
        default="n1-standard-8", description="Machine type of a vertex-custom job."
    )
    vertex_custom_accelerator_type: str | None = Field(
        default=None, description="Accelerator of a vertex-custom job (NVIDIA_TESLA_T4, ...)."
    )
    vertex_custom_accelerator_count: int = Field(
        default=0, ge=0, description="Accelerators per vertex-custom machine."
    )
    remote_poll_seconds: float = Field(
        default=30.0, gt=0, description="How often the poller looks at remote training jobs."
    )
    remote_poll_max_backoff_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Longest wait between polls of a remote job after transient errors.",
    )

    job_max_attempts: int = Field(default=3, ge=1, le=100)
    job_retry_backoff_seconds: float = Field(default=10.0, ge=0)
    job_heartbeat_seconds: float = Field(default=5.0, gt=0)
    job_stall_timeout_seconds: float = Field(default=60.0, gt=0)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return value

    @field_validator("blob_url")
    @classmethod
    def _known_blob_scheme(cls, value: str) -> str:
        if not value.startswith(("file://", "gs://")):
            raise ValueError("must start with file:// or gs://")
        return value

    @field_validator("download_signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "must be at least 32 characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("firebase_ml_base_url")
    @classmethod
    def _http_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("firebase_mirror_project")
    @classmethod
    def _firebase_project_id(cls, value: str | None) -> str | None:
        # The pattern firebase-admin checks model and operation names against.
        if value is not None and not FIREBASE_PROJECT_ID.fullmatch(value):
            raise ValueError("must be a project id: 6-30 lowercase letters, digits and -")
        return value

    @field_validator("firebase_mirror_bucket")
    @classmethod
    def _firebase_bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not FIREBASE_BUCKET.fullmatch(value):
            raise ValueError(
                "must be a bucket name (3-63 lowercase letters, digits, _ . -), without gs://"
            )
        return value

    @model_validator(mode="after")
    def _firebase_mirror_complete(self) -> Settings:
        if self.firebase_mirror_project is None:
            stray = [
                f"EDGE_AUTOML_{name.upper()}"
                for name in ("firebase_mirror_bucket", "firebase_credentials_file")
                if getattr(self, name) is not None
            ]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} set but EDGE_AUTOML_FIREBASE_MIRROR_PROJECT is not: "
                    "set the project to turn the Firebase ML mirror on, or unset them"
                )
            return self
        if self.firebase_mirror_bucket is None:
            raise ValueError(
                "EDGE_AUTOML_FIREBASE_MIRROR_BUCKET is required with "
                "EDGE_AUTOML_FIREBASE_MIRROR_PROJECT: the bucket the mirror uploads "
                ".tflite files to"
            )
        credentials = self.firebase_credentials_file
        if credentials is not None and not credentials.is_file():
            raise ValueError(f"EDGE_AUTOML_FIREBASE_CREDENTIALS_FILE: no file at {credentials}")
        return self

    @field_validator("vertex_staging_bucket")
    @classmethod
    def _gs_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("gs://") or len(value) <= len("gs://"):
            raise ValueError("must be gs://bucket or gs://bucket/prefix")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _default_backend_configured(self) -> Settings:
        missing = self.missing_for_backend(self.training_backend)
        if missing:
            raise ValueError(
                f"EDGE_AUTOML_TRAINING_BACKEND={self.training_backend} needs {', '.join(missing)}"
            )
        credentials = self.vertex_credentials_file
        if credentials is not None and not credentials.is_file():
            raise ValueError(f"EDGE_AUTOML_VERTEX_CREDENTIALS_FILE: no file at {credentials}")
        return self

    @model_validator(mode="after")
    def _stall_timeout_outlasts_heartbeats(self) -> Settings:
        if self.job_stall_timeout_seconds <= 2 * self.job_heartbeat_seconds:
            raise ValueError(
                "job_stall_timeout_seconds must exceed twice job_heartbeat_seconds, "
                "or live jobs would be reclaimed"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def firebase_mirror_on(self) -> bool:
        return self.firebase_mirror_project is not None

    def missing_for_backend(self, backend: str) -> list[str]:
        """The settings a training backend needs that are unset (environment variable names)."""
        needed: list[str] = []
        if backend in ("vertex-automl", "vertex-custom"):
            needed += ["vertex_project", "vertex_staging_bucket"]
        if backend == "vertex-custom":
            needed.append("vertex_custom_image")
        return [f"EDGE_AUTOML_{name.upper()}" for name in needed if getattr(self, name) is None]

    @property
    def binds_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(Exception):
    """Settings that cannot start the service; the message names each bad variable."""


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, turning pydantic's report into one clear message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [
            f"EDGE_AUTOML_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in exc.errors()
        ]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()


def open_settings_blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name (local folder or Cloud Storage)."""
    from app.kit.blobs import open_blob_store

    return open_blob_store(
        settings.blob_url,
        gcs_signing_credentials_file=settings.gcs_signing_credentials_file,
        gcs_project=settings.gcs_project,
    )

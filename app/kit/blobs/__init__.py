"""Blob storage behind one small interface: a local folder or a Cloud Storage bucket.

Open a store with :func:`open_blob_store` from the configured URL. The Cloud Storage backend
lives in :mod:`app.kit.blobs.gcs` and is imported only when a ``gs://`` URL is opened.
"""

from app.kit.blobs.base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    SigningNotConfigured,
    open_blob_store,
    validate_key,
    validate_prefix,
)
from app.kit.blobs.local import LocalBlobStore

__all__ = [
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "LocalBlobStore",
    "SigningNotConfigured",
    "open_blob_store",
    "validate_key",
    "validate_prefix",
]

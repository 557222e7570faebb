"""Which file an app gets for a model name, and where it downloads it from."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from sqlalchemy.orm import Session

from app.delivery.links import LinkClaims, SignerSource
from app.errors import NotFound
from app.kit.blobs import BlobInfo, BlobStore, SigningNotConfigured
from app.registry import service as registry_service


@dataclass(frozen=True)
class PublishedFile:
    """The TFLite file of the version an app is served."""

    model_id: str
    version: int
    blob_key: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class DownloadLocation:
    uri: str
    expires_at: datetime


def find_file(session: Session, *, model_name: str, installation_id: str | None) -> PublishedFile:
    """The published model named ``model_name`` and the version this installation gets."""
    # Publishing keeps display names unique among published models; if two slipped through,
    # the one published last is what apps see.
    model = next(iter(registry_service.published_named(session, model_name)), None)
    if model is None:
        raise NotFound(f"no published model is named {model_name!r}")
    assert model.published_split is not None
    version = choose_version(
        model.published_split, model_id=model.id, installation_id=installation_id
    )
    if version is None:
        raise NotFound(f"model {model_name!r} is published with no weight on any version")
    artifact = registry_service.get_artifact(
        session, model_id=model.id, version=version, format=registry_service.TFLITE
    )
    if artifact is None:  # publishing refuses this; a row edited by hand could still say so
        raise NotFound(f"version {version} of model {model_name!r} has no TFLite file")
    return PublishedFile(
        model_id=model.id,
        version=version,
        blob_key=artifact.blob_key,
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
    )


def choose_version(
    split: Mapping[str, int], *, model_id: str, installation_id: str | None
) -> int | None:
    """The version of ``split`` (version → weight) an installation gets; None if no weight.

    With an installation id the choice is a stable weighted draw: SHA-256 of the model id and
    the installation id falls in a bucket of [0, total weight), and versions own consecutive
    ranges of buckets in version order. The same installation therefore keeps its version
    while the split stays the same. Without one, the heaviest version, the newer on a tie.
    """
    weighted = sorted((int(version), weight) for version, weight in split.items() if weight > 0)
    if not weighted:
        return None
    if installation_id is None:
        return max(weighted, key=lambda pair: (pair[1], pair[0]))[0]
    digest = hashlib.sha256(f"{model_id}\0{installation_id}".encode()).digest()
    # 64 bits modulo a total of at most a few thousand: the bias is far below any noise.
    bucket = int.from_bytes(digest[:8], "big") % sum(weight for _, weight in weighted)
    for version, weight in weighted:
        if bucket < weight:
            return version
        bucket -= weight
    raise AssertionError("the bucket lies within the total weight")


def etag_matches(if_none_match: str | None, sha256: str) -> bool:
    """Whether an ``If-None-Match`` header names the file.

    Firebase's SDKs send the bare hash; browsers and curl send the quoted ETag back. Both are
    taken, in lists, with a ``W/`` prefix, and ``*``.
    """
    if not if_none_match:
        return False
    for part in if_none_match.split(","):
        tag = part.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tag = tag[1:-1]
        if tag.lower() == sha256:
            return True
    return False


def locate(
    blobs: BlobStore,
    signer: SignerSource,
    *,
    file: PublishedFile,
    now: datetime,
    ttl: timedelta,
    link_url: Callable[[str], str],
) -> DownloadLocation:
    """Where the app downloads ``file`` until when: the store's own signed URL (Cloud
    Storage), else a link this service signs and serves (``link_url`` makes it from a token).
    """
    # Whole seconds: a link's expiry is kept in seconds, and the answer must not promise more.
    expires_at = now.replace(microsecond=0) + ttl
    try:
        url = blobs.download_url(file.blob_key, expires_in=ttl)
    except SigningNotConfigured:
        url = None  # a bucket without a signing key: the bytes come through this service
    if url is not None:
        return DownloadLocation(uri=url, expires_at=expires_at)
    token = signer.get().sign(
        LinkClaims(blob_key=file.blob_key, sha256=file.sha256, expires_at=expires_at)
    )
    return DownloadLocation(uri=link_url(token), expires_at=expires_at)


def open_link(
    blobs: BlobStore, signer: SignerSource, *, token: str, now: datetime
) -> tuple[LinkClaims, BlobInfo, AbstractContextManager[BinaryIO]]:
    """What a genuine, unexpired link names: its claims, the blob's size and a reader."""
    claims = signer.get().verify(token, now=now)
    return claims, blobs.stat(claims.blob_key), blobs.open(claims.blob_key)

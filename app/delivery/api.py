"""Mobile download routes: Firebase ML's ``:download`` call and the links it hands out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.auth.dependencies import require
from app.auth.service import Scope
from app.delivery import service
from app.delivery.links import SignerSource, rfc3339
from app.delivery.schemas import ModelDownload
from app.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated, error_responses
from app.kit.clock import utcnow
from app.web.deps import BlobsDep, SessionDep, SettingsDep

# Included before the registry's routers: "/models/{modelId}" would match "x:download" too.
router = APIRouter(prefix="/v1", tags=["delivery"])
# Firebase ML's own path for the same call, for clients built against it (any project).
firebase_router = APIRouter(prefix="/v1beta2", tags=["delivery"])

CHUNK_SIZE = 1024 * 1024
INSTALLATION_ID = {"min_length": 1, "max_length": 200}
# The answer changes whenever a version is published: caches must ask every time.
REVALIDATE = "private, max-age=0, must-revalidate"


def get_signer(request: Request) -> SignerSource:
    """The app's link signer; its key is read (or made) on the first link, not at start."""
    state = request.app.state
    signer: SignerSource | None = getattr(state, "download_signer", None)
    if signer is None:
        # Two requests racing here make two sources that load the same stored key: harmless.
        signer = SignerSource(request.app.state.blobs, state.settings.download_signing_key)
        state.download_signer = signer
    return signer


SignerDep = Annotated[SignerSource, Depends(get_signer)]


@router.get(
    "/models/{modelName}:download",
    response_model=ModelDownload,
    dependencies=[Depends(require(Scope.READ))],
    responses={
        200: {
            "description": "Where to download the file; the ETag header carries its SHA-256.",
        },
        304: {"description": "If-None-Match named the file this installation gets."},
        **error_responses(InvalidInput, NotFound, Unauthenticated, PermissionDenied),
    },
)
def download_model(
    request: Request,
    response: Response,
    model_name: Annotated[str, Path(alias="modelName", description="The display name.")],
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    signer: SignerDep,
    installation_id: Annotated[
        str | None,
        Query(
            alias="installationId",
            description="Picks this installation's side of an A/B split, the same every time.",
            **INSTALLATION_ID,
        ),
    ] = None,
    variant: Annotated[
        str | None,
        Query(description="Another name for installationId.", **INSTALLATION_ID),
    ] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> ModelDownload | Response:
    """Firebase ML's mobile download: a published model's TFLite file by display name.

    Answers 304 when If-None-Match names the file's SHA-256 (the app is current), else where
    to download it, valid for a while. An A/B split serves each installation one side,
    stably; without an installation id, the heavier side.
    """
    if installation_id and variant and installation_id != variant:
        raise InvalidInput.field("variant", "names another installation than installationId")
    file = service.find_file(
        session, model_name=model_name, installation_id=installation_id or variant
    )
    headers = {"ETag": f'"{file.sha256}"', "Cache-Control": REVALIDATE}
    if service.etag_matches(if_none_match, file.sha256):
        return Response(status_code=304, headers=headers)
    base = settings.public_url or str(request.base_url).rstrip("/")
    location = service.locate(
        blobs,
        signer,
        file=file,
        now=utcnow(),
        ttl=timedelta(seconds=settings.download_link_ttl_seconds),
        link_url=lambda token: base + request.app.url_path_for("download_link", token=token),
    )
    response.headers.update(headers)
    return ModelDownload(
        download_uri=location.uri,
        expire_time=rfc3339(location.expires_at),
        size_bytes=str(file.size_bytes),
        model_hash=file.sha256,
        model_version=file.version,
    )


@firebase_router.get(
    "/projects/{project}/models/{modelName}:download",
    response_model=ModelDownload,
    dependencies=[Depends(require(Scope.READ))],
    responses={
        200: {"description": "As GET /v1/models/{modelName}:download."},
        304: {"description": "If-None-Match named the file this installation gets."},
        **error_responses(InvalidInput, NotFound, Unauthenticated, PermissionDenied),
    },
)
def download_model_firebase_path(
    request: Request,
    response: Response,
    project: Annotated[str, Path(description="Any project id: all map to this service.")],
    model_name: Annotated[str, Path(alias="modelName", description="The display name.")],
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    signer: SignerDep,
    installation_id: Annotated[str | None, Query(alias="installationId", **INSTALLATION_ID)] = None,
    variant: Annotated[str | None, Query(**INSTALLATION_ID)] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> ModelDownload | Response:
    """The mobile download at Firebase ML's path (v1beta2), for clients built against it."""
    return download_model(
        request,
        response,
        model_name,
        session,
        settings,
        blobs,
        signer,
        installation_id=installation_id,
        variant=variant,
        if_none_match=if_none_match,
    )


@router.get(
    "/downloads/{token}",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The file; its SHA-256 is the ETag.",
        },
        **error_responses(NotFound, PermissionDenied),
    },
)
def download_link(
    token: Annotated[str, Path(max_length=2048)], blobs: BlobsDep, signer: SignerDep
) -> StreamingResponse:
    """Download the file a :download answer signed a link to; the link itself is the grant.

    No API key: like a signed Cloud Storage URL, the token names one file and an expiry and
    carries the service's signature. A changed token is 403, and so is an expired one.
    """
    claims, info, reader = service.open_link(blobs, signer, token=token, now=utcnow())
    return StreamingResponse(
        _chunks(reader),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(info.size),
            "ETag": f'"{claims.sha256}"',
            "Content-Disposition": 'attachment; filename="model.tflite"',
            "Cache-Control": "private",
        },
    )


def _chunks(reader: AbstractContextManager[BinaryIO]) -> Iterator[bytes]:
    with reader as stream:
        while chunk := stream.read(CHUNK_SIZE):
            yield chunk

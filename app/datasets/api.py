"""Dataset routes: resources, import, images and labelling, stats, export."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.auth.dependencies import require
from app.auth.service import Scope
from app.datasets import service
from app.datasets.repository import ImageFilter
from app.datasets.schemas import (
    AnnotationsReplace,
    BoxRead,
    DatasetCreate,
    DatasetList,
    DatasetRead,
    DatasetStats,
    DatasetUpdate,
    ImageList,
    ImageRead,
    ImageUpdate,
    ImportUris,
    UploadResult,
)
from app.datasets.stats import compute_stats
from app.db.dataset import Dataset
from app.db.dataset_image import DatasetImage, Split
from app.db.image import Image
from app.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    error_responses,
)
from app.jobs import service as jobs_service
from app.jobs.schemas import OperationRead
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.web.deps import BlobsDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["datasets"])

DatasetId = Annotated[str, Path(alias="datasetId")]
ImageId = Annotated[str, Path(alias="imageId")]
AUTH = (Unauthenticated, PermissionDenied)
BINARY = {"schema": {"type": "string", "format": "binary"}}
READ = [Depends(require(Scope.READ))]
WRITE = [Depends(require(Scope.WRITE))]


def _dataset_read(dataset: Dataset, counts: service.DatasetCounts) -> DatasetRead:
    return DatasetRead(
        id=dataset.id,
        name=f"datasets/{dataset.id}",
        display_name=dataset.display_name,
        description=dataset.description,
        image_count=counts.image_count,
        labeled_image_count=counts.labeled_image_count,
        box_count=counts.box_count,
        labels=list(counts.labels),
        create_time=dataset.created_at,
        update_time=dataset.updated_at,
    )


def _one(session: SessionDep, dataset: Dataset) -> DatasetRead:
    return _dataset_read(dataset, service.counts(session, [dataset])[dataset.id])


def _image_read(
    dataset_image: DatasetImage, image: Image, box_count: int, boxes: list[BoxRead] | None = None
) -> ImageRead:
    return ImageRead(
        id=dataset_image.id,
        name=f"datasets/{dataset_image.dataset_id}/images/{dataset_image.id}",
        dataset_id=dataset_image.dataset_id,
        split=Split(dataset_image.split),
        labeled=dataset_image.labeled,
        width=image.width,
        height=image.height,
        format=image.format,
        mime_type=image.mime_type,
        size_bytes=image.size_bytes,
        sha256=image.sha256,
        source_uri=dataset_image.source_uri,
        box_count=box_count,
        boxes=boxes,
        create_time=dataset_image.created_at,
        update_time=dataset_image.updated_at,
    )


def _full_image(session: SessionDep, dataset_image: DatasetImage, image: Image) -> ImageRead:
    boxes = [
        BoxRead(label=b.label, x_min=b.x_min, y_min=b.y_min, x_max=b.x_max, y_max=b.y_max)
        for b in service.boxes_of(session, dataset_image_id=dataset_image.id)
    ]
    return _image_read(dataset_image, image, len(boxes), boxes)


# -- custom methods first: "/datasets/{id}:import" must not match "/datasets/{id}" --------


@router.post(
    "/datasets/{datasetId}:import",
    response_model=OperationRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, PayloadTooLarge, *AUTH),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "strict": {"type": "boolean", "default": False},
                        },
                    }
                },
                "application/json": {"schema": ImportUris.model_json_schema(by_alias=True)},
            },
        }
    },
)
async def import_dataset(
    dataset_id: DatasetId, request: Request, session: SessionDep, blobs: BlobsDep
) -> OperationRead:
    """Import a CSV, JSONL or zip upload, or index files by URI, as an operation."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, StarletteUploadFile):
            raise InvalidInput.field("file", "a multipart field 'file' with the CSV, JSONL or zip")
        strict = str(form.get("strict", "false")).lower() in {"true", "1", "yes"}
        job_id = service.start_import_upload(
            session,
            blobs,
            dataset_id=dataset_id,
            upload=upload.file,
            filename=upload.filename or "upload",
            strict=strict,
        )
    elif content_type == "application/json":
        try:
            body = ImportUris.model_validate_json(await request.body())
        except ValidationError as exc:
            raise InvalidInput.of_validation(exc) from None
        job_id = service.start_import_uris(session, dataset_id=dataset_id, request=body)
    else:
        raise InvalidInput(
            "send the file as multipart/form-data (field 'file') or JSON {\"uris\": [...]}"
        )
    return OperationRead.from_job(jobs_service.get(session, job_id=job_id))


@router.get(
    "/datasets/{datasetId}:export",
    dependencies=READ,
    response_class=Response,
    responses={
        200: {
            "content": {"text/csv": BINARY, "application/jsonl": BINARY, "application/zip": BINARY},
            "description": "The dataset as an AutoML CSV, Vertex JSON Lines, or a zip of "
            "images with labels.csv",
        },
        **error_responses(NotFound, *AUTH),
    },
)
def export_dataset(
    dataset_id: DatasetId,
    session: SessionDep,
    blobs: BlobsDep,
    format: Annotated[Literal["csv", "jsonl", "zip"], Query()] = "csv",
) -> Response:
    """Export the dataset so that importing the file gives the same images, boxes and splits."""
    dataset = service.get(session, dataset_id=dataset_id)
    stem = f"dataset-{dataset.id}"
    if format == "zip":
        path = service.export_zip(session, blobs, dataset_id=dataset_id)
        return FileResponse(
            path,
            media_type="application/zip",
            filename=f"{stem}.zip",
            background=BackgroundTask(path.unlink),
        )
    path = service.export_index(session, blobs, dataset_id=dataset_id, format=format)
    media = "text/csv" if format == "csv" else "application/jsonl"
    return FileResponse(
        path,
        media_type=f"{media}; charset=utf-8",
        filename=f"{stem}.{format}",
        background=BackgroundTask(path.unlink),
    )


@router.get(
    "/datasets/{datasetId}/images/{imageId}:content",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={
        200: {"content": {"image/*": BINARY}, "description": "The image bytes as stored"},
        **error_responses(NotFound, *AUTH),
    },
)
def get_image_content(
    dataset_id: DatasetId, image_id: ImageId, session: SessionDep, blobs: BlobsDep
) -> StreamingResponse:
    """The image's bytes, as imported."""
    _, image = service.get_image(session, dataset_id=dataset_id, image_id=image_id)
    reader = blobs.open(image.blob_key)

    def chunks():  # type: ignore[no-untyped-def]
        with reader:
            while chunk := reader.read(256 * 1024):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type=image.mime_type,
        headers={"ETag": f'"{image.sha256}"', "Content-Length": str(image.size_bytes)},
    )


@router.get(
    "/datasets/{datasetId}/images/{imageId}:thumbnail",
    dependencies=READ,
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": BINARY, "image/png": BINARY},
            "description": "Longest side 256",
        },
        **error_responses(NotFound, *AUTH),
    },
)
def get_image_thumbnail(
    dataset_id: DatasetId, image_id: ImageId, session: SessionDep, blobs: BlobsDep
) -> Response:
    """A thumbnail, longest side at most 256 pixels, made once and cached."""
    data, mime = service.thumbnail(session, blobs, dataset_id=dataset_id, image_id=image_id)
    return Response(data, media_type=mime, headers={"Cache-Control": "max-age=86400"})


# -- datasets ----------------------------------------------------------------------------


@router.post(
    "/datasets",
    response_model=DatasetRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, *AUTH),
)
def create_dataset(body: DatasetCreate, session: SessionDep) -> DatasetRead:
    """Create an empty dataset."""
    return _one(session, service.create(session, dataset_in=body))


@router.get(
    "/datasets",
    response_model=DatasetList,
    dependencies=READ,
    responses=error_responses(InvalidInput, *AUTH),
)
def list_datasets(
    session: SessionDep,
    settings: SettingsDep,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> DatasetList:
    """List datasets, newest first."""
    size = check_page_size(page_size, default=settings.default_page_size)
    datasets, cursor = service.list_datasets(
        session, page_size=size, after=decode_token(page_token)
    )
    counts = service.counts(session, datasets)
    return DatasetList(
        datasets=[_dataset_read(d, counts[d.id]) for d in datasets],
        next_page_token=encode_token(cursor) if cursor else None,
    )


@router.get(
    "/datasets/{datasetId}",
    response_model=DatasetRead,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_dataset(dataset_id: DatasetId, session: SessionDep) -> DatasetRead:
    """Get a dataset with its image, box and label counts."""
    return _one(session, service.get(session, dataset_id=dataset_id))


@router.patch(
    "/datasets/{datasetId}",
    response_model=DatasetRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def update_dataset(dataset_id: DatasetId, body: DatasetUpdate, session: SessionDep) -> DatasetRead:
    """Change a dataset's display name or description."""
    return _one(session, service.update(session, dataset_id=dataset_id, dataset_in=body))


@router.delete(
    "/datasets/{datasetId}",
    dependencies=WRITE,
    responses=error_responses(NotFound, FailedPrecondition, *AUTH),
)
def delete_dataset(dataset_id: DatasetId, session: SessionDep) -> dict[str, str]:
    """Delete a dataset; image files no other dataset uses are removed. Refused while a
    queued or running training job uses it."""
    service.delete(session, dataset_id=dataset_id)
    return {}


# -- images ------------------------------------------------------------------------------


@router.get(
    "/datasets/{datasetId}/images",
    response_model=ImageList,
    dependencies=READ,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def list_images(
    dataset_id: DatasetId,
    session: SessionDep,
    settings: SettingsDep,
    split: Split | None = None,
    label: Annotated[str | None, Query(description="Only images with a box of this label.")] = None,
    labeled: Annotated[
        bool | None, Query(description="Labelled (true) or not yet (false).")
    ] = None,
    negative: Annotated[
        bool | None, Query(description="Labelled images with no boxes (true), or the rest.")
    ] = None,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> ImageList:
    """List a dataset's images, newest first, with filters."""
    filters = ImageFilter(
        split=split.value if split else None, label=label, labeled=labeled, negative=negative
    )
    filter_key = f"{filters.split}|{label}|{labeled}|{negative}"
    size = check_page_size(page_size, default=settings.default_page_size)
    rows, cursor = service.list_images(
        session,
        dataset_id=dataset_id,
        page_size=size,
        after=decode_token(page_token, filter_key=filter_key),
        filters=filters,
    )
    return ImageList(
        images=[_image_read(di, image, count) for di, image, count in rows],
        next_page_token=encode_token(cursor, filter_key=filter_key) if cursor else None,
    )


@router.post(
    "/datasets/{datasetId}/images",
    response_model=UploadResult,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, PayloadTooLarge, *AUTH),
)
async def upload_images(
    dataset_id: DatasetId,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    files: Annotated[list[UploadFile], File(description="One or more images.")],
) -> UploadResult:
    """Upload unlabelled images (multipart, many at once)."""
    uploads = []
    for upload in files:
        data = await upload.read(settings.max_image_bytes + 1)
        uploads.append(service.UploadedFile(filename=upload.filename or "image", data=data))
    added, errors = service.upload_images(
        session, blobs, settings, dataset_id=dataset_id, files=uploads
    )
    return UploadResult(images=[_image_read(di, image, 0) for di, image in added], errors=errors)


@router.get(
    "/datasets/{datasetId}/images/{imageId}",
    response_model=ImageRead,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_image(dataset_id: DatasetId, image_id: ImageId, session: SessionDep) -> ImageRead:
    """Get one image's metadata and boxes."""
    dataset_image, image = service.get_image(session, dataset_id=dataset_id, image_id=image_id)
    return _full_image(session, dataset_image, image)


@router.patch(
    "/datasets/{datasetId}/images/{imageId}",
    response_model=ImageRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def update_image(
    dataset_id: DatasetId, image_id: ImageId, body: ImageUpdate, session: SessionDep
) -> ImageRead:
    """Move an image to another split."""
    dataset_image, image = service.update_image(
        session, dataset_id=dataset_id, image_id=image_id, split=body.split
    )
    return _full_image(session, dataset_image, image)


@router.put(
    "/datasets/{datasetId}/images/{imageId}/annotations",
    response_model=ImageRead,
    dependencies=WRITE,
    responses=error_responses(InvalidInput, NotFound, *AUTH),
)
def replace_annotations(
    dataset_id: DatasetId,
    image_id: ImageId,
    body: AnnotationsReplace,
    session: SessionDep,
    settings: SettingsDep,
) -> ImageRead:
    """Replace all boxes of an image; an empty list marks it a reviewed negative."""
    dataset_image, image = service.replace_annotations(
        session, settings, dataset_id=dataset_id, image_id=image_id, boxes=body.boxes
    )
    return _full_image(session, dataset_image, image)


@router.get(
    "/datasets/{datasetId}/stats",
    response_model=DatasetStats,
    dependencies=READ,
    responses=error_responses(NotFound, *AUTH),
)
def get_dataset_stats(
    dataset_id: DatasetId, session: SessionDep, settings: SettingsDep
) -> DatasetStats:
    """Label and split counts, box sizes, and the readiness warnings for training."""
    service.get(session, dataset_id=dataset_id)
    return compute_stats(session, dataset_id=dataset_id, max_labels=settings.max_labels)

"""What a worker runs for datasets: imports and the clean-up of orphaned image blobs."""

from __future__ import annotations

from typing import Any

from app.datasets import importer, service
from app.jobs.context import JobContext


def import_dataset(ctx: JobContext) -> dict[str, Any]:
    """Import index files or a zip into a dataset (see importer.py)."""
    return importer.run_import(ctx, ctx.blobs)


def collect_orphans(ctx: JobContext) -> dict[str, Any]:
    """Delete images, blobs and thumbnails that no dataset refers to any more."""
    return {"deletedImageCount": service.collect_orphans(ctx.session, ctx.blobs)}

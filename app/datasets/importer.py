"""One import run: read index files (CSV, JSONL) and zips, fetch and check every image,
stage the good rows in batches, then publish them into the dataset in one transaction.

Memory stays flat as files grow: rows stream through, and only per-image facts (hash,
split, box count) are kept, which are bounded by the number of distinct images.
"""

from __future__ import annotations

import io
import itertools
import logging
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from app.config import Settings
from app.datasets import repository, service
from app.datasets.formats import IndexFileError, IndexRow, RowError, parse_csv, parse_jsonl
from app.datasets.images import ImageInfo, ImageRejected, inspect_image
from app.datasets.schemas import ImportResult, RowErrorRead
from app.datasets.sources import (
    FetchPolicy,
    Location,
    SourceError,
    ZipLocation,
    fetch,
    fetch_to,
    location_of,
)
from app.errors import AppError, InvalidInput
from app.jobs.context import JobCancelled, JobContext
from app.kit.blobs import BlobStore
from app.kit.clock import utcnow

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 1000
ZIP_MAGIC = b"PK\x03\x04"


class _CountingReader(io.RawIOBase):
    """Counts the bytes read from a stream, so progress can be reported as a fraction."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


@dataclass
class _Image:
    """What one import knows about an image it has resolved."""

    info: ImageInfo | None = None
    error: str | None = None
    explicit_split: str | None = None
    explicit_row: int = 0


@dataclass
class _Totals:
    rows_read: int = 0
    error_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    new_images: int = 0
    duplicate_uris: int = 0


class Importer:
    def __init__(self, ctx: JobContext, blobs: BlobStore) -> None:
        self.ctx = ctx
        self.blobs = blobs
        self.settings: Settings = ctx.settings
        self.job_id = ctx.job_id
        self.dataset_id: str = ctx.payload["datasetId"]
        self.strict = bool(ctx.payload.get("strict", False))
        self.policy = FetchPolicy.of(self.settings)
        self.totals = _Totals()
        self.pool = ThreadPoolExecutor(self.settings.import_fetch_threads, "import-fetch")
        self.images: dict[tuple[str, str], _Image] = {}
        self.by_sha: dict[str, _Image] = {}
        self.pending_images: dict[str, dict[str, Any]] = {}
        # Blobs this import wrote itself: the only ones a refused import may delete unrecorded.
        self.written_blobs: set[str] = set()
        self.pending_rows: list[dict[str, Any]] = []
        self.labels: set[str] = set()
        self.sources_total = 1
        self.sources_done = 0
        self.current: _CountingReader | None = None
        self.current_size = 0

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            with self.pool:
                return self._run()
        except Exception as exc:
            # A bad file, a vanished dataset or a cancel is final, and so is a crash on the
            # last try: then nothing of this import may linger. Other crashes start afresh.
            permanent = isinstance(exc, JobCancelled) or (
                isinstance(exc, AppError) and exc.status_code < 500
            )
            if permanent or self.ctx.last_attempt:
                self._discard()
            raise

    def _run(self) -> dict[str, Any]:
        with self.ctx.transaction() as session:
            # A retried import starts clean: rows staged by an earlier attempt go.
            repository.clear_staged(session, self.job_id)
            service.get(session, dataset_id=self.dataset_id)
            self.labels = set(repository.labels_of(session, self.dataset_id))
        with tempfile.TemporaryDirectory(prefix="import-") as scratch_dir:
            for source in self._sources(Path(scratch_dir)):
                self._import_source(*source)
                self.sources_done += 1
        self._flush()
        if self.strict and self.totals.error_count:
            raise InvalidInput(
                f"strict import refused: {self.totals.error_count} rows are invalid, "
                f"first: row {self.totals.errors[0]['row']} {self.totals.errors[0]['field']}: "
                f"{self.totals.errors[0]['message']}",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [
                            {"field": f"row {e['row']}: {e['field']}", "description": e["message"]}
                            for e in self.totals.errors
                        ],
                    }
                ],
            )
        session = self.ctx.session
        images, unlabeled, boxes = repository.publish_staged(
            session, job_id=self.job_id, dataset_id=self.dataset_id
        )
        repository.touch_dataset(session, self.dataset_id, utcnow())
        # Images whose every row was rejected were stored for nothing.
        service.collect_orphans(session, self.blobs, created_by_job_id=self.job_id)
        self._drop_upload()
        return ImportResult(
            rows_read=self.totals.rows_read,
            imported_image_count=images,
            new_image_count=self.totals.new_images,
            duplicate_uri_count=self.totals.duplicate_uris,
            unlabeled_image_count=unlabeled,
            imported_box_count=boxes,
            error_count=self.totals.error_count,
            errors=[RowErrorRead(**error) for error in self.totals.errors],
            errors_truncated=self.totals.error_count > len(self.totals.errors),
        ).model_dump(by_alias=True)

    def _discard(self) -> None:
        """Undo a refused import: staged rows, and images only it had brought."""
        unrecorded = {row["blob_key"] for row in self.pending_images.values()}
        with self.ctx.transaction() as session:
            # Another import may have recorded the same content meanwhile: keep those.
            recorded = repository.recorded_blob_keys(session, unrecorded)
        for key in (unrecorded & self.written_blobs) - recorded:
            self.blobs.delete(key)
        self.pending_images.clear()
        with self.ctx.transaction() as session:
            repository.clear_staged(session, self.job_id)
        with self.ctx.transaction() as session:
            service.collect_orphans(session, self.blobs, created_by_job_id=self.job_id)
        self._drop_upload()

    def _drop_upload(self) -> None:
        if self.ctx.payload.get("upload"):
            self.blobs.delete(service.upload_key(self.job_id))

    # -- sources ---------------------------------------------------------------------------

    def _sources(self, scratch: Path) -> Iterator[tuple[Path, str, Location | None]]:
        """(local copy, name, base location for relative paths) of each file to import."""
        if self.ctx.payload.get("upload"):
            self.sources_total = 1
            local = scratch / "upload"
            with (
                self.blobs.open(service.upload_key(self.job_id)) as stream,
                local.open("wb") as out,
            ):
                shutil.copyfileobj(stream, out, 1024 * 1024)
            yield local, str(self.ctx.payload.get("filename") or "upload"), None
            return
        uris: list[str] = self.ctx.payload["uris"]
        self.sources_total = len(uris)
        for index, uri in enumerate(uris):
            local = scratch / f"source-{index}"
            try:
                with local.open("wb") as out:
                    fetch_to(
                        uri, out, policy=self.policy, max_bytes=self.settings.max_archive_bytes
                    )
                base = location_of(uri, policy=self.policy)
            except SourceError as exc:
                raise InvalidInput.field(f"uris[{index}]", str(exc)) from None
            yield local, uri, base

    def _import_source(self, local: Path, name: str, base: Location | None) -> None:
        with local.open("rb") as head:
            magic = head.read(4)
        if magic == ZIP_MAGIC:
            self._import_zip(local, name)
            return
        self._import_index(local, name, base)

    def _import_zip(self, local: Path, name: str) -> None:
        try:
            archive = ZipLocation(local, max_total_bytes=self.settings.max_archive_bytes, name=name)
        except SourceError as exc:
            raise InvalidInput(str(exc)) from None
        with archive:
            referenced: set[str] = set()
            try:
                for member in archive.index_files():
                    with archive.open_member(member) as stream:
                        self._parse(
                            stream,
                            archive.member_size(member),
                            f"{name}:{member}",
                            archive.beside(member),
                            referenced,
                        )
            except SourceError as exc:
                raise InvalidInput(str(exc)) from None
            extras = [m for m in archive.image_members() if m not in referenced]
            for start in range(0, len(extras), self.settings.import_batch_rows):
                window = extras[start : start + self.settings.import_batch_rows]
                self._prefetch([(member, archive) for member in window])
                for member in window:
                    self._stage_unlabeled(member, archive)
                self._flush()

    def _import_index(self, local: Path, name: str, base: Location | None) -> None:
        with local.open("rb") as stream:
            self._parse(stream, local.stat().st_size, name, base, None)

    def _parse(
        self,
        stream: BinaryIO,
        size: int,
        name: str,
        base: Location | None,
        referenced: set[str] | None,
    ) -> None:
        counting = _CountingReader(stream)
        self.current, self.current_size = counting, max(size, 1)
        reader = io.BufferedReader(counting)
        head = reader.peek(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        parse = parse_jsonl if head.startswith(b"{") else parse_csv
        try:
            rows = parse(reader, max_boxes_per_image=self.settings.max_boxes_per_image)
            while window := list(itertools.islice(rows, self.settings.import_batch_rows)):
                self._prefetch([(i.uri, base) for i in window if isinstance(i, IndexRow)])
                for item in window:
                    self.totals.rows_read += 1
                    if isinstance(item, RowError):
                        self._error(item.row, item.field, item.message)
                        if item.uri and referenced is not None and isinstance(base, ZipLocation):
                            self._mark_referenced(item.uri, base, referenced)
                    else:
                        self._stage(item, base, referenced)
                self._flush()
        except IndexFileError as exc:
            raise InvalidInput(f"{name}: {exc}") from None
        finally:
            self.current = None

    # -- rows ------------------------------------------------------------------------------

    def _error(self, row: int, field_name: str, message: str) -> None:
        self.totals.error_count += 1
        if len(self.totals.errors) < MAX_REPORTED_ERRORS:
            self.totals.errors.append({"row": row, "field": field_name, "message": message})

    @staticmethod
    def _key(ref: str, base: Location | None) -> tuple[str, str]:
        return (base.describe() if base else "", ref)

    def _fetch(self, ref: str, base: Location | None) -> tuple[ImageInfo | None, str]:
        """Read, check and store one image: (info, blob key) or (None, why not).

        Runs on the fetch threads: it touches nothing shared but the blob store, whose
        content-addressed writes are idempotent.
        """
        try:
            data = fetch(
                ref, base=base, policy=self.policy, max_bytes=self.settings.max_image_bytes
            )
            info = inspect_image(
                data,
                max_bytes=self.settings.max_image_bytes,
                max_pixels=self.settings.max_image_pixels,
            )
        except (SourceError, ImageRejected) as exc:
            return None, str(exc)
        # Not durable yet: _flush syncs the store once per batch, before the rows commit.
        key, wrote = service.store_image_bytes(self.blobs, data, info, durable=False)
        if wrote:
            self.written_blobs.add(key)  # set.add is atomic under the GIL
        return info, key

    def _remember(self, key: tuple[str, str], info: ImageInfo | None, outcome: str) -> _Image:
        if info is None:
            resolved = _Image(error=outcome)
        elif info.sha256 in self.by_sha:
            # The same content under another URI is the same image (boxes merge).
            resolved = self.by_sha[info.sha256]
            self.totals.duplicate_uris += 1
        else:
            resolved = self.by_sha[info.sha256] = _Image(info=info)
            self.pending_images[info.sha256] = service.image_row(
                info, key=outcome, job_id=self.job_id
            )
        self.images[key] = resolved
        return resolved

    def _prefetch(self, refs: list[tuple[str, Location | None]]) -> None:
        """Fetch the images a window of rows names, several at a time (I/O-bound)."""
        wanted: dict[tuple[str, str], tuple[str, Location | None]] = {}
        for ref, base in refs:
            key = self._key(ref, base)
            if key not in self.images:
                wanted[key] = (ref, base)
        results = self.pool.map(lambda item: self._fetch(*item), wanted.values())
        for key, (info, outcome) in zip(wanted, results, strict=True):
            self._remember(key, info, outcome)

    def _resolve(self, ref: str, base: Location | None) -> _Image:
        key = self._key(ref, base)
        known = self.images.get(key)
        if known is not None:
            return known
        return self._remember(key, *self._fetch(ref, base))

    def _stage(self, row: IndexRow, base: Location | None, referenced: set[str] | None) -> None:
        if referenced is not None and isinstance(base, ZipLocation):
            self._mark_referenced(row.uri, base, referenced)
        image = self._resolve(row.uri, base)
        if image.info is None:
            self._error(row.row, "IMAGE_URI", f"{row.uri}: {image.error}")
            return
        if row.split is not None:
            if image.explicit_split is None:
                image.explicit_split, image.explicit_row = row.split.value, row.row
            elif image.explicit_split != row.split.value:
                self._error(
                    row.row,
                    "ML_USE",
                    f"{row.split.value} conflicts with {image.explicit_split} given for the "
                    f"same image in row {image.explicit_row}",
                )
                return
        if row.box is not None and row.box.label not in self.labels:
            if len(self.labels) >= self.settings.max_labels:
                self._error(row.row, "LABEL", f"more than {self.settings.max_labels} labels")
                return
            self.labels.add(row.box.label)
        self.pending_rows.append(self._row_values(row.row, row.uri, image.info, row, labeled=True))

    @staticmethod
    def _mark_referenced(uri: str, archive: ZipLocation, referenced: set[str]) -> None:
        """An image named by an index row, even a rejected one, is not an unlabelled extra."""
        member = archive.member_name(uri)
        if member is not None:
            referenced.add(member)

    def _stage_unlabeled(self, member: str, archive: ZipLocation) -> None:
        image = self._resolve(member, archive)
        if image.info is None:
            self._error(0, "IMAGE_URI", f"{member}: {image.error}")
            return
        self.pending_rows.append(self._row_values(0, member, image.info, None, labeled=False))

    def _row_values(
        self, row: int, uri: str, info: ImageInfo, index_row: IndexRow | None, *, labeled: bool
    ) -> dict[str, Any]:
        explicit = index_row.split.value if index_row and index_row.split else None
        box = index_row.box if index_row else None
        return {
            "job_id": self.job_id,
            "row": row,
            "sha256": info.sha256,
            "source_uri": uri,
            "split": explicit
            or service.assigned_split(info.sha256, seed=self.settings.split_seed).value,
            "split_assigned": explicit is None,
            "labeled": labeled,
            "label": box.label if box else None,
            "x_min": box.x_min if box else None,
            "y_min": box.y_min if box else None,
            "x_max": box.x_max if box else None,
            "y_max": box.y_max if box else None,
        }

    def _flush(self) -> None:
        """Commit one batch: new image rows and the staged rows that refer to them."""
        if not self.pending_rows and not self.pending_images:
            return
        # The batch's image files reach the disk before any row that names them commits.
        self.blobs.sync()
        with self.ctx.transaction() as session:
            new_rows = list(self.pending_images.values())
            known = repository.image_ids_by_sha(session, self.pending_images)
            repository.insert_images(session, [r for r in new_rows if r["sha256"] not in known])
            self.totals.new_images += len(new_rows) - len(known)
            shas = {row["sha256"] for row in self.pending_rows}
            ids = repository.image_ids_by_sha(session, shas)
            staged = [
                {**{k: v for k, v in row.items() if k != "sha256"}, "image_id": ids[row["sha256"]]}
                for row in self.pending_rows
            ]
            repository.stage_rows(session, staged)
        self.pending_images.clear()
        self.pending_rows.clear()
        self._report()

    def _report(self) -> None:
        within = self.current.count / self.current_size if self.current else 1.0
        fraction = (self.sources_done + min(within, 1.0)) / self.sources_total
        self.ctx.report_progress(
            min(fraction, 0.99),
            rowsRead=self.totals.rows_read,
            imagesStored=len(self.by_sha),
            errors=self.totals.error_count,
        )


def run_import(ctx: JobContext, blobs: BlobStore) -> dict[str, Any]:
    return Importer(ctx, blobs).run()

"""The input files of batch prediction: JSON Lines of instances, or a CSV of image URIs.

JSONL (Vertex AI's form): one object per line, ``{"content": "gs://bucket/a.jpg",
"mimeType": "image/jpeg"}``; ``mimeType`` is optional and informative (the bytes decide),
other fields are refused. CSV: one column of URIs; a first row that is just ``content`` or
``uri`` (any case) is a header and skipped. In both, blank lines are skipped, a UTF-8 BOM and
CRLF line ends are fine, and every ``content`` must be an absolute reference the operator's
:class:`FetchPolicy` allows (``gs://``, a local path under the import root, ``https://`` where
allowed): that is checked here, before any image is read. Whether each image is there and
readable is found out when the job runs, and reported per image.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from app.batch_prediction.schemas import InstancesFormat
from app.datasets.formats import text_lines
from app.datasets.sources import FetchPolicy, SourceError, check_absolute

JSONL_FIELDS = ("content", "mimeType")
CSV_HEADERS = ("content", "uri")


@dataclass(frozen=True)
class LineError:
    """Why one line of an input file is not an instance; ``field`` is None for the whole line."""

    line: int
    field: str | None
    message: str


def read_instances(
    stream: BinaryIO, instances_format: InstancesFormat, *, policy: FetchPolicy
) -> Iterator[dict[str, Any] | LineError]:
    """Each instance of the file (``{"content", "mimeType"?}``) or the error of its line, in
    order. Raises IndexFileError when the file is not UTF-8 text."""
    if instances_format == "jsonl":
        return _jsonl(stream, policy)
    return _csv(stream, policy)


def _jsonl(stream: BinaryIO, policy: FetchPolicy) -> Iterator[dict[str, Any] | LineError]:
    lines = text_lines(stream)
    try:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield _jsonl_instance(line, number, policy)
    finally:
        lines.close()


def _jsonl_instance(line: str, number: int, policy: FetchPolicy) -> dict[str, Any] | LineError:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return LineError(number, None, f"is not valid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(value, dict):
        return LineError(
            number, None, 'must be a JSON object like {"content": "gs://bucket/image.jpg"}'
        )
    unknown = sorted(set(value) - set(JSONL_FIELDS))
    if unknown:
        return LineError(number, unknown[0], "unknown field; a line holds content and mimeType")
    mime_type = value.get("mimeType")
    if mime_type is not None and not isinstance(mime_type, str):
        return LineError(number, "mimeType", "must be a string such as image/jpeg")
    return _instance(value.get("content"), mime_type, number, policy)


def _csv(stream: BinaryIO, policy: FetchPolicy) -> Iterator[dict[str, Any] | LineError]:
    lines = text_lines(stream)
    reader = csv.reader(lines)
    first = True
    try:
        while True:
            # A quoted field may span lines; a row is numbered by the line it starts on.
            number = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield LineError(number, None, f"is not valid CSV: {exc}")
                return
            while fields and not fields[-1].strip():
                fields.pop()  # "gs://b/a.jpg," is one column
            if not fields:
                continue
            if first and len(fields) == 1 and fields[0].strip().lower() in CSV_HEADERS:
                first = False
                continue
            first = False
            if len(fields) != 1:
                yield LineError(
                    number,
                    None,
                    f"has {len(fields)} columns; a CSV input holds one column, the image URI",
                )
                continue
            yield _instance(fields[0], None, number, policy)
    finally:
        lines.close()


def _instance(
    content: Any, mime_type: str | None, number: int, policy: FetchPolicy
) -> dict[str, Any] | LineError:
    if content is None:
        return LineError(number, "content", "is required: the image's gs:// URI or path")
    if not isinstance(content, str) or not content.strip():
        return LineError(number, "content", "must be the image's URI or path (a string)")
    content = content.strip()
    try:
        check_absolute(content, policy=policy)
    except SourceError as exc:
        return LineError(number, "content", f"{content!r}: {exc.reason}")
    instance: dict[str, Any] = {"content": content}
    if mime_type:
        instance["mimeType"] = mime_type
    return instance

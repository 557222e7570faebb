"""Read and write the AutoML/Vertex object-detection index files (CSV and JSON Lines).

The parsers stream: they hold one line (one CSV row) at a time plus a box count per image,
so a million-row index costs no more memory than a small one. A bad row becomes a
``RowError`` and parsing goes on; only a file that is not text at all raises
``IndexFileError``. See DESIGN §3.1 for the format.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO, TextIO

MAX_LABEL_LENGTH = 64  # Vertex AnnotationSpec display names are at most 64 characters.
_DECIMALS = 6
_SLOP = 1e-6  # float noise from other tools' exports, e.g. 1.0000001; clipped, not rejected
# Long enough for a JSONL line with 500 annotations; a longer line means a binary file.
_MAX_LINE_CHARS = 1 << 20
_ML_USE_KEY = "aiplatform.googleapis.com/ml_use"
_ML_USE_FIELD = f"dataItemResourceLabels.{_ML_USE_KEY}"
# OWASP's list of characters that make a spreadsheet read a cell as a formula.
_FORMULA_STARTS = "=+-@\t\r"
# errors="surrogateescape" turns each undecodable byte into one of these code points, so a
# bad byte is found on its own line instead of somewhere in an 8 KiB decoding chunk.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

_CSV_COLUMN_COUNTS = (1, 2, 10, 11)
_CSV_COLUMNS = 11
# Names of the eight coordinate columns: the two-vertex form uses vertices 1 and 3.
_VERTEX_NAMES = ("X1", "Y1", "X2", "Y2", "X3", "Y3", "X4", "Y4")
_TWO_VERTEX_NAMES = {0: "X_MIN", 1: "Y_MIN", 4: "X_MAX", 5: "Y_MAX"}
_BOX_NAMES = ("X_MIN", "Y_MIN", "X_MAX", "Y_MAX")
_TWO_VERTEX_FORM = "X_MIN,Y_MIN,,,X_MAX,Y_MAX,,"


class MlUse(StrEnum):
    TRAIN = "TRAIN"
    VALIDATION = "VALIDATION"
    TEST = "TEST"


_ML_USE_VALUES: dict[str, MlUse | None] = {
    "train": MlUse.TRAIN,
    "training": MlUse.TRAIN,
    "validation": MlUse.VALIDATION,
    "test": MlUse.TEST,
    "unassigned": None,
}
# Vertex writes lower-case names in both formats; legacy AutoML's TRAIN is read but not written.
_VERTEX_ML_USE = {MlUse.TRAIN: "training", MlUse.VALIDATION: "validation", MlUse.TEST: "test"}


@dataclass(frozen=True, slots=True)
class Box:
    """A labelled box in relative coordinates, origin top-left, 6 decimals."""

    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One good row: an image, its split (None: the service assigns one), and a box or none."""

    row: int
    uri: str
    split: MlUse | None
    box: Box | None


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one row (one annotation in JSONL) was skipped; ``row`` is the 1-based line."""

    row: int
    field: str
    message: str
    # The image the row names, when it could be read: such an image is not "unlabelled".
    uri: str | None = None


@dataclass(frozen=True, slots=True)
class ExportImage:
    """One image to export with all of its boxes."""

    uri: str
    split: MlUse
    boxes: tuple[Box, ...]


class IndexFileError(Exception):
    """The whole file is unusable (not UTF-8, binary, not CSV); the message names the line."""


class _FieldError(ValueError):
    """A ValueError that knows which field of the row it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- validation shared by both formats -------------------------------------------------


def _preview(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def validate_label(name: str) -> str:
    """Return the label stripped and NFC-normalized, or raise ValueError saying what is wrong."""
    # NFC so that "é" typed two ways is one label, not two look-alike classes.
    label = unicodedata.normalize("NFC", name.strip())
    if not label:
        raise ValueError("label is empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(
            f"label {_preview(label)!r} is {len(label)} characters; at most {MAX_LABEL_LENGTH}"
        )
    for char in label:
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            raise ValueError(
                f"label {_preview(label)!r} contains the control character U+{ord(char):04X}"
            )
    if not any(char.isalnum() for char in label):
        raise ValueError(f"label {_preview(label)!r} has no letter or digit")
    return label


def _unit(value: float, field: str, shown: str) -> float:
    """Check one coordinate and return it clipped into [0, 1] and rounded."""
    if not 0.0 <= value <= 1.0:
        if not math.isfinite(value):
            raise _FieldError(field, f"{field} {shown} is not a finite number")
        if value < -_SLOP or value > 1 + _SLOP:
            raise _FieldError(
                field, f"{field} {shown} is outside [0, 1]; coordinates are relative to the image"
            )
        value = min(max(value, 0.0), 1.0)
    # + 0.0 turns -0.0 into 0.0, which would otherwise be written as "-0.000000".
    return round(value, _DECIMALS) + 0.0


def _ordered(values: Sequence[float], names: Sequence[str]) -> tuple[float, float, float, float]:
    x_min, y_min, x_max, y_max = values
    for low, high, low_name, high_name in (
        (x_min, x_max, names[0], names[2]),
        (y_min, y_max, names[1], names[3]),
    ):
        if not low < high:
            raise _FieldError(low_name, f"{low_name} {low!r} is not less than {high_name} {high!r}")
    return x_min, y_min, x_max, y_max


def validate_box(
    x_min: float, y_min: float, x_max: float, y_max: float
) -> tuple[float, float, float, float]:
    """Return the box clipped to [0, 1] and rounded to 6 decimals, or raise ValueError."""
    names = ("x_min", "y_min", "x_max", "y_max")
    values = [
        _unit(v, name, repr(v)) for v, name in zip((x_min, y_min, x_max, y_max), names, strict=True)
    ]
    return _ordered(values, names)


def _parse_ml_use(text: str, field: str, allowed: str) -> MlUse | None:
    key = text.strip().lower()
    if not key:
        return None
    if key not in _ML_USE_VALUES:
        raise _FieldError(field, f"{field} {text.strip()!r} is not one of {allowed}")
    return _ML_USE_VALUES[key]


class _BoxCounter:
    """Boxes seen per image so far; memory grows with distinct images, not with rows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def over_limit(self, uri: str) -> bool:
        count = self._counts.get(uri, 0) + 1
        self._counts[uri] = count
        return count > self.limit

    def message(self, uri: str) -> str:
        return f"image {uri!r} has more than {self.limit} boxes"


def text_lines(stream: BinaryIO) -> Generator[str, None, None]:
    """The stream's lines, decoded; raises IndexFileError naming the first line that is not text."""
    # newline="" keeps line ends for csv (quoted fields may hold them) and splits CR, LF, CRLF.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        number = 0
        while line := text.readline(_MAX_LINE_CHARS + 1):
            number += 1
            if len(line) > _MAX_LINE_CHARS:
                raise IndexFileError(
                    f"line {number} is longer than {_MAX_LINE_CHARS:,} characters;"
                    " is this an index file?"
                )
            if _UNDECODABLE.search(line):
                raise IndexFileError(f"line {number} is not valid UTF-8; save the file as UTF-8")
            if "\x00" in line:
                raise IndexFileError(
                    f"line {number} contains a NUL byte; save the file as UTF-8 text"
                )
            yield line
    finally:
        # Closing the wrapper would close the caller's stream; the caller owns it.
        text.detach()


# --- CSV ---------------------------------------------------------------------------------


def _formula_guarded(value: str) -> bool:
    # Leading quotes count through, so a value that already looks guarded is guarded again
    # and reading strips exactly the one quote that writing added.
    first = value.lstrip("'")[:1]
    return bool(first) and first in _FORMULA_STARTS


def csv_field_safe(value: str) -> str:
    """Prefix ``'`` where a spreadsheet would run the value as a formula."""
    return "'" + value if _formula_guarded(value) else value


def _csv_unguard(value: str) -> str:
    """Undo ``csv_field_safe``: drop the one quote it would have added."""
    if value.startswith("'") and _formula_guarded(value[1:]):
        return value[1:]
    return value


def _csv_number(text: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _FieldError(field, f"{field} {text!r} is not a number") from None
    return _unit(value, field, repr(text))


def _csv_box(label_text: str, coordinate_texts: Sequence[str]) -> Box | None:
    label_text = label_text.strip()
    texts = [text.strip() for text in coordinate_texts]
    present = [bool(text) for text in texts]
    if not label_text:
        if any(present):
            raise _FieldError("LABEL", "box coordinates without a label")
        return None
    try:
        label = validate_label(_csv_unguard(label_text))
    except ValueError as exc:
        raise _FieldError("LABEL", str(exc)) from None
    if not any(present):
        raise _FieldError(
            "X_MIN",
            f"label {_preview(label)!r} has no box; give {_TWO_VERTEX_FORM}"
            " or leave the label empty for an image without boxes",
        )
    if present == [True, True, False, False, True, True, False, False]:
        values = [_csv_number(texts[index], name) for index, name in _TWO_VERTEX_NAMES.items()]
        return Box(label, *_ordered(values, _BOX_NAMES))
    if all(present):
        points = [_csv_number(text, name) for text, name in zip(texts, _VERTEX_NAMES, strict=True)]
        xs, ys = points[0::2], points[1::2]
        # Four vertices that are not axis-aligned become their enclosing rectangle.
        return Box(label, *_ordered((min(xs), min(ys), max(xs), max(ys)), _BOX_NAMES))
    for index, name in _TWO_VERTEX_NAMES.items():
        if not present[index]:
            raise _FieldError(
                name, f"{name} is missing; a box is {_TWO_VERTEX_FORM} or all four vertices"
            )
    for index in (2, 3, 6, 7):
        if not present[index]:
            name = _VERTEX_NAMES[index]
            raise _FieldError(
                name, f"{name} is missing; give all four vertices or only {_TWO_VERTEX_FORM}"
            )
    raise AssertionError("unreachable: every partial pattern is reported above")


def _csv_row(fields: list[str], row: int) -> IndexRow | RowError:
    # Spreadsheets pad short rows to the widest one; empty cells past the last column mean nothing.
    while len(fields) > _CSV_COLUMNS and not fields[-1].strip():
        fields.pop()
    if len(fields) not in _CSV_COLUMN_COUNTS:
        return RowError(row, "row", f"expected 1, 2, 10 or 11 columns, got {len(fields)}")
    # The column count alone says whether ML_USE is there; guessing from values would make
    # a URI like "test" ambiguous.
    has_ml_use = len(fields) in (2, 11)
    rest = fields[1:] if has_ml_use else fields
    uri = _csv_unguard(rest[0].strip())
    try:
        split = (
            _parse_ml_use(fields[0], "ML_USE", "TRAIN, TRAINING, VALIDATION, TEST, UNASSIGNED")
            if has_ml_use
            else None
        )
        if not uri:
            raise _FieldError("IMAGE_URI", "IMAGE_URI is empty")
        box = _csv_box(rest[1], rest[2:]) if len(rest) > 1 else None
    except _FieldError as exc:
        return RowError(row, exc.field, str(exc), uri or None)
    return IndexRow(row, uri, split, box)


def parse_csv(stream: BinaryIO, *, max_boxes_per_image: int = 500) -> Iterator[IndexRow | RowError]:
    """Yield each row of an AutoML/Vertex CSV index as an IndexRow or a RowError, streaming."""
    counter = _BoxCounter(max_boxes_per_image)
    lines = text_lines(stream)
    reader = csv.reader(lines)
    try:
        while True:
            # A quoted field may span lines; a row is numbered by the line it starts on.
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise IndexFileError(f"line {start} is not valid CSV: {exc}") from exc
            if not any(field.strip() for field in fields):
                continue
            result = _csv_row(fields, start)
            if (
                isinstance(result, IndexRow)
                and result.box is not None
                and counter.over_limit(result.uri)
            ):
                yield RowError(start, "row", counter.message(result.uri), result.uri)
            else:
                yield result
    finally:
        lines.close()


def write_csv(images: Iterable[ExportImage], out: TextIO) -> None:
    """Write images as Vertex CSV: one row per box, or one image-only row when it has none."""
    writer = csv.writer(out, lineterminator="\n")
    for image in images:
        split = _VERTEX_ML_USE[image.split]
        uri = csv_field_safe(image.uri)
        if not image.boxes:
            writer.writerow([split, uri] + [""] * 9)
        for box in image.boxes:
            writer.writerow(
                [
                    split,
                    uri,
                    csv_field_safe(box.label),
                    f"{box.x_min:.{_DECIMALS}f}",
                    f"{box.y_min:.{_DECIMALS}f}",
                    "",
                    "",
                    f"{box.x_max:.{_DECIMALS}f}",
                    f"{box.y_max:.{_DECIMALS}f}",
                    "",
                    "",
                ]
            )


# --- JSON Lines --------------------------------------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _json_coordinate(annotation: dict[str, Any], key: str, path: str) -> float:
    field = f"{path}.{key}"
    if key not in annotation:
        raise _FieldError(field, f"{field} is missing")
    value = annotation[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(field, f"{field} must be a number, got {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer literal too large for a float
        number = math.inf
    return _unit(number, field, repr(value))


def _json_box(annotation: object, path: str) -> Box:
    if not isinstance(annotation, dict):
        raise _FieldError(path, f"{path} must be an object, got {_json_type(annotation)}")
    label_field = f"{path}.displayName"
    name = annotation.get("displayName")
    if not isinstance(name, str):
        raise _FieldError(label_field, f"{label_field} must be a string, got {_json_type(name)}")
    try:
        label = validate_label(name)
    except ValueError as exc:
        raise _FieldError(label_field, str(exc)) from None
    keys = ("xMin", "yMin", "xMax", "yMax")
    values = [_json_coordinate(annotation, key, path) for key in keys]
    return Box(label, *_ordered(values, [f"{path}.{key}" for key in keys]))


def _json_split(record: dict[str, Any]) -> MlUse | None:
    labels = record.get("dataItemResourceLabels")
    if labels is None:
        return None
    if not isinstance(labels, dict):
        raise _FieldError(
            "dataItemResourceLabels",
            f"dataItemResourceLabels must be an object, got {_json_type(labels)}",
        )
    value = labels.get(_ML_USE_KEY)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _FieldError(
            _ML_USE_FIELD, f"{_ML_USE_FIELD} must be a string, got {_json_type(value)}"
        )
    return _parse_ml_use(value, _ML_USE_FIELD, "training, validation, test, unassigned")


def _jsonl_line(line: str, row: int, counter: _BoxCounter) -> Iterator[IndexRow | RowError]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        yield RowError(row, "line", f"not valid JSON: {exc.msg} at column {exc.colno}")
        return
    if not isinstance(record, dict):
        yield RowError(row, "line", f"expected a JSON object, got {_json_type(record)}")
        return
    try:
        uri = record.get("imageGcsUri")
        if not isinstance(uri, str) or not uri.strip():
            raise _FieldError("imageGcsUri", "imageGcsUri is missing or empty")
        uri = uri.strip()
        split = _json_split(record)
        annotations = record.get("boundingBoxAnnotations") or []
        if not isinstance(annotations, list):
            raise _FieldError(
                "boundingBoxAnnotations",
                f"boundingBoxAnnotations must be an array, got {_json_type(annotations)}",
            )
    except _FieldError as exc:
        yield RowError(row, exc.field, str(exc))
        return
    if not annotations:
        yield IndexRow(row, uri, split, None)
        return
    # One bad annotation costs only itself; an image whose annotations all fail yields no
    # image-only row, since importing it as a negative example would be wrong.
    for index, annotation in enumerate(annotations):
        path = f"boundingBoxAnnotations[{index}]"
        try:
            box = _json_box(annotation, path)
        except _FieldError as exc:
            yield RowError(row, exc.field, str(exc), uri)
            continue
        if counter.over_limit(uri):
            yield RowError(row, path, counter.message(uri), uri)
        else:
            yield IndexRow(row, uri, split, box)


def parse_jsonl(
    stream: BinaryIO, *, max_boxes_per_image: int = 500
) -> Iterator[IndexRow | RowError]:
    """Yield each annotation of a Vertex JSON Lines index as an IndexRow or a RowError."""
    counter = _BoxCounter(max_boxes_per_image)
    lines = text_lines(stream)
    try:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield from _jsonl_line(line, number, counter)
    finally:
        lines.close()


def write_jsonl(images: Iterable[ExportImage], out: TextIO) -> None:
    """Write images in Vertex's JSON Lines import form, one image per line."""
    for image in images:
        record: dict[str, Any] = {"imageGcsUri": image.uri}
        if image.boxes:
            record["boundingBoxAnnotations"] = [
                {
                    "displayName": box.label,
                    "xMin": round(box.x_min, _DECIMALS),
                    "yMin": round(box.y_min, _DECIMALS),
                    "xMax": round(box.x_max, _DECIMALS),
                    "yMax": round(box.y_max, _DECIMALS),
                }
                for box in image.boxes
            ]
        record["dataItemResourceLabels"] = {_ML_USE_KEY: _VERTEX_ML_USE[image.split]}
        # ASCII escapes keep U+2028 and friends from splitting a line in other readers.
        out.write(json.dumps(record, allow_nan=False) + "\n")

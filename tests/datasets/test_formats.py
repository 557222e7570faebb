"""The AutoML/Vertex index files: every accepted variant, every rejection, round trips, memory."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.datasets.formats import (
    Box,
    ExportImage,
    IndexFileError,
    IndexRow,
    MlUse,
    RowError,
    csv_field_safe,
    parse_csv,
    parse_jsonl,
    validate_box,
    validate_label,
    write_csv,
    write_jsonl,
)

MB = 1024 * 1024


def parse(fmt: str, data: str | bytes, **kwargs: Any) -> list[IndexRow | RowError]:
    raw = data.encode() if isinstance(data, str) else data
    parser = parse_csv if fmt == "csv" else parse_jsonl
    return list(parser(io.BytesIO(raw), **kwargs))


def only_row(data: str) -> IndexRow:
    [result] = parse("csv", data)
    assert isinstance(result, IndexRow), result
    return result


def jsonl_line(
    uri: str = "gs://b/x.jpg",
    annotations: list[dict[str, Any]] | None = None,
    ml_use: str | None = "training",
    **extra: Any,
) -> str:
    record: dict[str, Any] = {"imageGcsUri": uri, **extra}
    if annotations is not None:
        record["boundingBoxAnnotations"] = annotations
    if ml_use is not None:
        record["dataItemResourceLabels"] = {"aiplatform.googleapis.com/ml_use": ml_use}
    return json.dumps(record)


def annotation(label: str = "cat", **coords: Any) -> dict[str, Any]:
    return {"displayName": label, "xMin": 0.1, "yMin": 0.2, "xMax": 0.5, "yMax": 0.6, **coords}


# --- accepted CSV variants ---------------------------------------------------------------

CAT = Box("cat", 0.1, 0.2, 0.5, 0.6)


@pytest.mark.parametrize(
    ("line", "uri", "split", "box"),
    [
        pytest.param(
            "TRAIN,gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", MlUse.TRAIN, CAT,
            id="upper-case, two vertices",
        ),
        pytest.param(
            "validation,gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", MlUse.VALIDATION,
            CAT, id="lower-case validation",
        ),
        pytest.param(
            "Test,gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", MlUse.TEST, CAT,
            id="mixed-case test",
        ),
        pytest.param(
            "TRAINING,gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", MlUse.TRAIN, CAT,
            id="TRAINING alias",
        ),
        pytest.param(
            "training,gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", MlUse.TRAIN, CAT,
            id="Vertex lower-case training",
        ),
        pytest.param(
            "UNASSIGNED,gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", None, CAT,
            id="UNASSIGNED",
        ),
        pytest.param(
            ",gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", None, CAT,
            id="empty ML_USE",
        ),
        pytest.param(
            "gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", None, CAT,
            id="no ML_USE column",
        ),
        pytest.param(
            "TRAIN,gs://b/x.jpg,cat,0.1,0.2,0.5,0.2,0.5,0.6,0.1,0.6", "gs://b/x.jpg", MlUse.TRAIN,
            CAT, id="four vertices",
        ),
        pytest.param(
            "gs://b/x.jpg,cat,0.3,0.2,0.5,0.4,0.3,0.6,0.1,0.4", "gs://b/x.jpg", None,
            Box("cat", 0.1, 0.2, 0.5, 0.6), id="rotated four vertices -> enclosing rectangle",
        ),
        pytest.param(
            "TRAIN,gs://b/x.jpg,cat,.1,.2,,,.5,.6,,", "gs://b/x.jpg", MlUse.TRAIN, CAT,
            id="numbers without leading zero",
        ),
        pytest.param(
            "TRAIN, gs://b/x.jpg , cat , 0.1 , 0.2 ,,, 0.5 , 0.6 ,,", "gs://b/x.jpg",
            MlUse.TRAIN, CAT, id="spaces around fields",
        ),
        pytest.param(
            "TRAIN,gs://b/x.jpg,cat,-0.0000005,0.2,,,1.0000005,0.6,,", "gs://b/x.jpg",
            MlUse.TRAIN, Box("cat", 0.0, 0.2, 1.0, 0.6), id="float slop clipped",
        ),
        pytest.param(
            "TRAIN,gs://b/x.jpg,cat,0.1234564,0.2,,,0.5555556,0.6,,", "gs://b/x.jpg",
            MlUse.TRAIN, Box("cat", 0.123456, 0.2, 0.555556, 0.6), id="rounded to 6 decimals",
        ),
        pytest.param("gs://b/x.jpg", "gs://b/x.jpg", None, None, id="image only, 1 column"),
        pytest.param(
            "TEST,gs://b/x.jpg", "gs://b/x.jpg", MlUse.TEST, None, id="image only, 2 columns"
        ),
        pytest.param(
            "TEST,gs://b/x.jpg,,,,,,,,,", "gs://b/x.jpg", MlUse.TEST, None,
            id="image only, 11 columns",
        ),
        pytest.param(
            "gs://b/x.jpg,,,,,,,,,", "gs://b/x.jpg", None, None, id="image only, 10 columns"
        ),
        pytest.param(
            "TEST,gs://b/x.jpg,,,,,,,,,,,,", "gs://b/x.jpg", MlUse.TEST, None,
            id="empty columns past the 11th ignored",
        ),
        pytest.param(
            '"TRAIN","gs://b/a,b ""c"".jpg","big, red car",0.1,0.2,,,0.5,0.6,,',
            'gs://b/a,b "c".jpg', MlUse.TRAIN, Box("big, red car", 0.1, 0.2, 0.5, 0.6),
            id="quoted fields with commas and quotes",
        ),
        pytest.param(
            "TRAIN,gs://b/x.jpg, traffic light ,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg",
            MlUse.TRAIN, Box("traffic light", 0.1, 0.2, 0.5, 0.6), id="label with spaces",
        ),
        pytest.param(
            "TRAIN,gs://b/猫.jpg,猫 café,0.1,0.2,,,0.5,0.6,,", "gs://b/猫.jpg", MlUse.TRAIN,
            Box("猫 café", 0.1, 0.2, 0.5, 0.6), id="unicode uri and label",
        ),
        pytest.param(
            "TRAIN,'=cmd|x,'=SUM(A1),0.1,0.2,,,0.5,0.6,,", "=cmd|x", MlUse.TRAIN,
            Box("=SUM(A1)", 0.1, 0.2, 0.5, 0.6), id="export formula guard removed",
        ),
        pytest.param(
            "TRAIN,gs://b/x.jpg,'quoted,0.1,0.2,,,0.5,0.6,,", "gs://b/x.jpg", MlUse.TRAIN,
            Box("'quoted", 0.1, 0.2, 0.5, 0.6), id="other leading quote kept",
        ),
    ],
)  # fmt: skip
def test_csv_accepts(line: str, uri: str, split: MlUse | None, box: Box | None) -> None:
    assert only_row(line + "\n") == IndexRow(1, uri, split, box)


def test_csv_bom_crlf_and_blank_lines_keep_file_line_numbers() -> None:
    data = (
        "\ufeffTRAIN,gs://b/1.jpg,cat,0.1,0.2,,,0.5,0.6,,\r\n"
        "\r\n"
        "   \r\n"
        ",,,,,,,,,,\r\n"
        "TEST,gs://b/2.jpg\r\n"
        "gs://b/3.jpg"  # no line end at the end of the file
    )
    assert parse("csv", data) == [
        IndexRow(1, "gs://b/1.jpg", MlUse.TRAIN, CAT),
        IndexRow(5, "gs://b/2.jpg", MlUse.TEST, None),
        IndexRow(6, "gs://b/3.jpg", None, None),
    ]


def test_csv_old_mac_line_ends() -> None:
    data = "TRAIN,gs://b/1.jpg\rTEST,gs://b/2.jpg\r"
    assert [(r.row, r.uri) for r in parse("csv", data) if isinstance(r, IndexRow)] == [
        (1, "gs://b/1.jpg"),
        (2, "gs://b/2.jpg"),
    ]


def test_csv_quoted_field_across_lines_is_numbered_by_its_first_line() -> None:
    data = (
        'TRAIN,"gs://b/odd\nname.jpg",cat,0.1,0.2,,,0.5,0.6,,\n'
        "TRAIN,gs://b/next.jpg,cat,0.1,0.2,,,0.5,0.6,,\n"
        "TRAIN,gs://b/next.jpg,cat,2,0.2,,,0.5,0.6,,\n"
    )
    results = parse("csv", data)
    assert results[0] == IndexRow(1, "gs://b/odd\nname.jpg", MlUse.TRAIN, CAT)
    assert results[1] == IndexRow(3, "gs://b/next.jpg", MlUse.TRAIN, CAT)
    assert isinstance(results[2], RowError) and results[2].row == 4


def test_header_row_is_an_ordinary_row_error() -> None:
    data = "ML_USE,IMAGE_URI,LABEL,X1,Y1,X2,Y2,X3,Y3,X4,Y4\nTRAIN,gs://b/x.jpg\n"
    first, second = parse("csv", data)
    assert isinstance(first, RowError) and (first.row, first.field) == (1, "ML_USE")
    assert second == IndexRow(2, "gs://b/x.jpg", MlUse.TRAIN, None)


def test_parsing_leaves_the_callers_stream_open() -> None:
    stream = io.BytesIO(b"TRAIN,gs://b/1.jpg\nTRAIN,gs://b/2.jpg\n")
    assert len(list(parse_csv(stream))) == 2
    assert not stream.closed
    stream = io.BytesIO(b"TRAIN,gs://b/1.jpg\nTRAIN,gs://b/2.jpg\n")
    rows = parse_jsonl(stream)
    next(rows)
    rows.close()  # the caller stops early
    assert not stream.closed


# --- accepted JSONL variants -------------------------------------------------------------


def test_jsonl_vertex_line_with_extra_keys() -> None:
    line = jsonl_line(
        annotations=[
            {**annotation("cat"), "annotationResourceLabels": {"k": "v"}},
            annotation("dog", xMin=0, yMin=0, xMax=1, yMax=1),
        ],
        ml_use="training",
        dataItemResourceLabels={
            "aiplatform.googleapis.com/ml_use": "training",
            "aiplatform.googleapis.com/annotation_set_name": "x",
        },
        unknownKey=[1, 2],
    )
    assert parse("jsonl", line + "\n") == [
        IndexRow(1, "gs://b/x.jpg", MlUse.TRAIN, CAT),
        IndexRow(1, "gs://b/x.jpg", MlUse.TRAIN, Box("dog", 0.0, 0.0, 1.0, 1.0)),
    ]


@pytest.mark.parametrize(
    ("ml_use", "split"),
    [
        ("training", MlUse.TRAIN),
        ("validation", MlUse.VALIDATION),
        ("TEST", MlUse.TEST),
        ("unassigned", None),
        (None, None),
    ],
)
def test_jsonl_ml_use(ml_use: str | None, split: MlUse | None) -> None:
    [row] = parse("jsonl", jsonl_line(annotations=[annotation()], ml_use=ml_use))
    assert row == IndexRow(1, "gs://b/x.jpg", split, CAT)


def test_jsonl_images_without_annotations_bom_and_blank_lines() -> None:
    data = (
        "\ufeff"
        + jsonl_line("gs://b/1.jpg", annotations=None, ml_use=None)
        + "\r\n\r\n  \n"
        + jsonl_line("gs://b/2.jpg", annotations=[], ml_use="test")
        + "\n"
    )
    assert parse("jsonl", data) == [
        IndexRow(1, "gs://b/1.jpg", None, None),
        IndexRow(4, "gs://b/2.jpg", MlUse.TEST, None),
    ]


def test_jsonl_bad_annotation_costs_only_itself() -> None:
    line = jsonl_line(
        annotations=[annotation("a"), annotation("b", xMin="x"), annotation("c", yMax=2)]
    )
    results = parse("jsonl", line)
    assert [(type(r).__name__, getattr(r, "field", None)) for r in results] == [
        ("IndexRow", None),
        ("RowError", "boundingBoxAnnotations[1].xMin"),
        ("RowError", "boundingBoxAnnotations[2].yMax"),
    ]


def test_jsonl_image_whose_annotations_all_fail_is_not_a_negative_example() -> None:
    results = parse("jsonl", jsonl_line(annotations=[annotation("?")]))
    assert [type(r) for r in results] == [RowError]


# --- rejected rows -----------------------------------------------------------------------

GOOD_CSV = "TRAIN,gs://b/good.jpg,cat,0.1,0.2,,,0.5,0.6,,"
GOOD_JSONL = jsonl_line("gs://b/good.jpg", annotations=[annotation()])
ROW = "TRAIN,gs://b/x.jpg"


def bad(fmt: str, line: str, field: str, fragment: str) -> Any:
    """A bad line between two good ones: the error is on line 2, lines 1 and 3 still come."""
    good = GOOD_CSV if fmt == "csv" else GOOD_JSONL
    text = f"{good}\n{line}\n{good}\n"
    return pytest.param(fmt, text, 2, field, fragment, [1, 3], id=f"{fmt}: {fragment}")


BOX_501 = [f"{ROW},cat,0.1,0.2,,,0.5,0.6,," for _ in range(501)]

BAD_INPUTS = [
    bad("csv", f"{ROW},cat,abc,0.2,,,0.5,0.6,,", "X_MIN", "X_MIN 'abc' is not a number"),
    bad("csv", f"{ROW},cat,0.1,NaN,,,0.5,0.6,,", "Y_MIN", "Y_MIN 'NaN' is not a finite number"),
    bad("csv", f"{ROW},cat,0.1,0.2,,,inf,0.6,,", "X_MAX", "X_MAX 'inf' is not a finite number"),
    bad("csv", f"{ROW},cat,0.1,0.2,,,1.2,0.6,,", "X_MAX", "X_MAX '1.2' is outside [0, 1]"),
    bad("csv", f"{ROW},cat,0.1,-0.1,,,0.5,0.6,,", "Y_MIN", "Y_MIN '-0.1' is outside [0, 1]"),
    bad("csv", f"{ROW},cat,0.1,0.2,1.5,0.2,0.5,0.6,0.1,0.6", "X2", "X2 '1.5' is outside"),
    bad("csv", f"{ROW},cat,0.5,0.2,,,0.5,0.6,,", "X_MIN", "X_MIN 0.5 is not less than X_MAX 0.5"),
    bad("csv", f"{ROW},cat,0.1,0.7,,,0.5,0.6,,", "Y_MIN", "Y_MIN 0.7 is not less than Y_MAX 0.6"),
    bad("csv", f"{ROW},cat,0.1,0.2,0.5,0.6", "row", "expected 1, 2, 10 or 11 columns, got 7"),
    bad("csv", f"{ROW},cat,0.1,0.2,,,0.5,0.6,,,x", "row", "got 12"),
    bad(
        "csv", "TRAINS,gs://b/x.jpg,cat,0.1,0.2,,,0.5,0.6,,", "ML_USE",
        "ML_USE 'TRAINS' is not one of TRAIN, TRAINING, VALIDATION, TEST, UNASSIGNED",
    ),
    bad("csv", "gs://b/x.jpg,cat", "ML_USE", "ML_USE 'gs://b/x.jpg' is not one of"),
    bad("csv", "ML_USE,IMAGE_URI,LABEL,X1,Y1,X2,Y2,X3,Y3,X4,Y4", "ML_USE", "'ML_USE' is not"),
    bad("csv", f"{ROW},,0.1,0.2,,,0.5,0.6,,", "LABEL", "box coordinates without a label"),
    bad("csv", f"{ROW},cat,,,,,,,,", "X_MIN", "label 'cat' has no box"),
    bad("csv", f"{ROW},cat,0.1,0.2,,,0.5,,,", "Y_MAX", "Y_MAX is missing"),
    bad("csv", f"{ROW},cat,0.1,0.2,0.5,0.2,0.5,0.6,0.1,", "Y4", "Y4 is missing"),
    bad("csv", "TRAIN,  ,cat,0.1,0.2,,,0.5,0.6,,", "IMAGE_URI", "IMAGE_URI is empty"),
    bad("csv", f"{ROW},{'a' * 65},0.1,0.2,,,0.5,0.6,,", "LABEL", "is 65 characters; at most 64"),
    bad("csv", f"{ROW},ca\x07t,0.1,0.2,,,0.5,0.6,,", "LABEL", "control character U+0007"),
    bad("csv", f"{ROW},?!,0.1,0.2,,,0.5,0.6,,", "LABEL", "label '?!' has no letter or digit"),
    pytest.param(
        "csv", "\n".join([*BOX_501, GOOD_CSV]), 501, "row",
        "image 'gs://b/x.jpg' has more than 500 boxes", [*range(1, 501), 502],
        id="csv: 501st box of an image",
    ),
    bad("jsonl", '{"imageGcsUri": "gs://b/x.jpg",', "line", "not valid JSON"),
    bad("jsonl", '["gs://b/x.jpg"]', "line", "expected a JSON object, got an array"),
    bad(
        "jsonl", jsonl_line(annotations=[annotation(xMin=0.6)]), "boundingBoxAnnotations[0].xMin",
        "xMin 0.6 is not less than boundingBoxAnnotations[0].xMax 0.5",
    ),
    bad(
        "jsonl", jsonl_line(annotations=[annotation()], ml_use="holdout"),
        "dataItemResourceLabels.aiplatform.googleapis.com/ml_use", "'holdout' is not one of",
    ),
    bad("jsonl", '{"boundingBoxAnnotations": []}', "imageGcsUri", "missing or empty"),
    bad(
        "jsonl", jsonl_line(annotations=[annotation(yMax="0.6")]),
        "boundingBoxAnnotations[0].yMax", "must be a number, got a string",
    ),
    bad(
        "jsonl", jsonl_line(annotations=[annotation(xMin=float("nan"))]),
        "boundingBoxAnnotations[0].xMin", "xMin nan is not a finite number",
    ),
    bad(
        "jsonl", jsonl_line(annotations=[annotation(yMin=-2)]),
        "boundingBoxAnnotations[0].yMin", "yMin -2 is outside [0, 1]",
    ),
    bad(
        "jsonl", jsonl_line(annotations=[{"xMin": 0.1}]),
        "boundingBoxAnnotations[0].displayName", "must be a string, got null",
    ),
    bad(
        "jsonl", jsonl_line(annotations=[annotation("-")]),
        "boundingBoxAnnotations[0].displayName", "no letter or digit",
    ),
    pytest.param(
        "jsonl", "\n".join([GOOD_JSONL, jsonl_line(annotations=[annotation()] * 501), GOOD_JSONL]),
        2, "boundingBoxAnnotations[500]", "image 'gs://b/x.jpg' has more than 500 boxes",
        [1, *[2] * 500, 3], id="jsonl: 501st box of an image",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "text", "row", "field", "fragment", "good_rows"), BAD_INPUTS)
def test_bad_row_is_reported_and_the_rest_still_come_through(
    fmt: str, text: str, row: int, field: str, fragment: str, good_rows: list[int]
) -> None:
    results = parse(fmt, text)
    errors = [r for r in results if isinstance(r, RowError)]
    assert len(errors) == 1, errors
    [error] = errors
    assert (error.row, error.field) == (row, field)
    assert fragment in error.message, error.message
    assert [r.row for r in results if isinstance(r, IndexRow)] == good_rows


def test_box_limit_is_per_image_and_configurable() -> None:
    rows = [f"TRAIN,gs://b/{name}.jpg,cat,0.1,0.2,,,0.5,0.6,," for name in "aabaa"]
    results = parse("csv", "\n".join(rows), max_boxes_per_image=2)
    assert [(r.row, r.field) for r in results if isinstance(r, RowError)] == [
        (4, "row"),
        (5, "row"),
    ]


# --- unusable files ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("bad_line", [12, 5000])
def test_non_utf8_file_names_the_exact_line(fmt: str, bad_line: int) -> None:
    good = (GOOD_CSV if fmt == "csv" else GOOD_JSONL).encode() + b"\n"
    bad = b"TRAIN,gs://b/caf\xe9.jpg\n" if fmt == "csv" else b'{"imageGcsUri": "\xe9"}\n'
    data = good * (bad_line - 1) + bad + good * 3
    seen = 0
    with pytest.raises(IndexFileError, match=rf"^line {bad_line} is not valid UTF-8"):
        for _ in (parse_csv if fmt == "csv" else parse_jsonl)(io.BytesIO(data)):
            seen += 1
    assert seen == bad_line - 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"^line 1 is not valid UTF-8"),
        ("TRAIN,gs://b/x.jpg\n".encode("utf-16"), r"^line 1 is not valid UTF-8"),
        (b"TRAIN,gs://b/x.jpg\nTRAIN,gs://b/\x00.jpg\n", r"^line 2 contains a NUL byte"),
        (b"TRAIN,gs://b/x.jpg\n" + b"x" * (2 * MB), r"^line 2 is longer than"),
        # csv's field size limit stops a quote that is never closed from swallowing the file.
        (
            b'TRAIN,gs://b/x.jpg\nTRAIN,"gs://b/unclosed.jpg\n' + (b"y" * 99 + b"\n") * 2000,
            r"^line 2 is not valid CSV",
        ),
    ],
    ids=["png", "utf-16", "nul byte", "no line ends", "unclosed quote"],
)
def test_not_a_text_index_file(data: bytes, message: str) -> None:
    with pytest.raises(IndexFileError, match=message):
        parse("csv", data)


# --- labels, boxes, formula guard --------------------------------------------------------


def test_validate_label_normalizes() -> None:
    assert validate_label("  traffic light\t") == "traffic light"
    assert validate_label("cafe\u0301") == "caf\u00e9"  # NFC: one label however it was typed
    assert validate_label("a" * 64) == "a" * 64
    assert validate_label("=SUM") == "=SUM"  # the guard is the CSV reader's business


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "label is empty"),
        ("   ", "label is empty"),
        ("x" * 70, "label 'xxxxxxxxxxxxxxxxxxxx…' is 70 characters; at most 64"),
        ("a\nb", "label 'a\\nb' contains the control character U+000A"),
        ("a\u2028b", "control character U+2028"),
        ("-/-", "label '-/-' has no letter or digit"),
    ],
)
def test_validate_label_rejects(name: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_label(name)
    assert message in str(caught.value)


def test_validate_box() -> None:
    assert validate_box(0.1234567, -0.0000001, 1.0000001, 0.5) == (0.123457, 0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"x_max 1\.5 is outside"):
        validate_box(0.1, 0.1, 1.5, 0.5)
    with pytest.raises(ValueError, match=r"y_min 0\.5 is not less than y_max 0\.5"):
        validate_box(0.1, 0.5, 0.2, 0.5)
    with pytest.raises(ValueError, match="x_min nan is not a finite number"):
        validate_box(float("nan"), 0.1, 0.2, 0.5)


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("'=x", "''=x"),  # already looks guarded: guarded again so reading undoes one quote
        ("cat", "cat"),
        ("'cat", "'cat"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_csv_field_safe(value: str, safe: str) -> None:
    assert csv_field_safe(value) == safe


# --- writers and round trips -------------------------------------------------------------

EXPORT = [
    ExportImage(
        "gs://b/1.jpg",
        MlUse.TRAIN,
        (Box("cat", 0.1, 0.2, 0.5, 0.6), Box("=SUM(A1:A9)", 0.0, 0.0, 1.0, 1.0)),
    ),
    ExportImage("gs://b/empty.jpg", MlUse.TEST, ()),
    ExportImage(
        '=HYPERLINK("http://x")',
        MlUse.VALIDATION,
        (
            Box("+1 plus", 0.123456, 0.000001, 0.999999, 0.5),
            Box("-minus", 0.25, 0.25, 0.75, 0.75),
            Box("@home", 0.1, 0.1, 0.2, 0.2),
            Box("'=already guarded", 0.1, 0.1, 0.2, 0.2),
            Box("'plain quote", 0.1, 0.1, 0.2, 0.2),
        ),
    ),
    ExportImage(
        'relative/dir, with "comma"/ümlaut.png',
        MlUse.TRAIN,
        (Box('big, "red" car', 0.1, 0.2, 0.3, 0.4), Box("猫", 0.5, 0.5, 0.6, 0.6)),
    ),
]


def regroup(results: list[IndexRow | RowError]) -> list[ExportImage]:
    """Fold parsed rows back into images, in first-seen order."""
    assert all(isinstance(r, IndexRow) for r in results), results
    images: dict[str, tuple[MlUse | None, list[Box]]] = {}
    for r in results:
        assert isinstance(r, IndexRow)
        split, boxes = images.setdefault(r.uri, (r.split, []))
        assert split == r.split
        if r.box is not None:
            boxes.append(r.box)
    out = []
    for uri, (split, boxes) in images.items():
        assert split is not None
        out.append(ExportImage(uri, split, tuple(boxes)))
    return out


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_round_trip(fmt: str) -> None:
    text = io.StringIO()
    (write_csv if fmt == "csv" else write_jsonl)(EXPORT, text)
    assert regroup(parse(fmt, text.getvalue())) == EXPORT


def test_csv_export_has_no_formula_cells() -> None:
    text = io.StringIO()
    write_csv(EXPORT, text)
    cells = [cell for row in csv.reader(io.StringIO(text.getvalue())) for cell in row]
    assert cells  # the check below must look at something
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]


def test_csv_export_text() -> None:
    text = io.StringIO()
    write_csv(
        [
            ExportImage("gs://b/a.jpg", MlUse.TRAIN, (Box("-x", 0.1, 0.2, 0.3, 0.4),)),
            ExportImage("gs://b/b.jpg", MlUse.VALIDATION, ()),
        ],
        text,
    )
    assert text.getvalue() == (
        "training,gs://b/a.jpg,'-x,0.100000,0.200000,,,0.300000,0.400000,,\n"
        "validation,gs://b/b.jpg,,,,,,,,,\n"
    )


def test_jsonl_export_is_vertex_form() -> None:
    text = io.StringIO()
    write_jsonl(
        [
            ExportImage("gs://b/a.jpg", MlUse.TEST, (Box("猫", 0.1, 0.2, 0.3, 0.4),)),
            ExportImage("gs://b/b.jpg", MlUse.TRAIN, ()),
        ],
        text,
    )
    first, second = text.getvalue().splitlines()
    assert json.loads(first) == {
        "imageGcsUri": "gs://b/a.jpg",
        "boundingBoxAnnotations": [
            {"displayName": "猫", "xMin": 0.1, "yMin": 0.2, "xMax": 0.3, "yMax": 0.4}
        ],
        "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": "test"},
    }
    assert json.loads(second)["dataItemResourceLabels"] == {
        "aiplatform.googleapis.com/ml_use": "training"
    }
    assert text.getvalue().isascii()  # no raw U+2028 and friends to split a line elsewhere


# --- streaming ---------------------------------------------------------------------------


def generated_rows(images: int, boxes_per_image: int) -> Iterator[str]:
    for image in range(images):
        for box in range(boxes_per_image):
            low = box / 20
            yield f"TRAIN,gs://bucket/datasets/field-survey/images/{image:06d}.jpg,label{box},{low},{low},,,0.9,0.9,,\n"


def test_parsing_200k_rows_keeps_memory_flat(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as out:
        out.writelines(generated_rows(images=20_000, boxes_per_image=10))
    assert path.stat().st_size > 15 * MB  # bigger than the budget, so loading it would fail

    rows = errors = 0
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            for result in parse_csv(stream):
                if isinstance(result, IndexRow):
                    rows += 1
                else:
                    errors += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (rows, errors) == (200_000, 0)
    assert peak < 20 * MB, f"peak {peak / MB:.1f} MB"

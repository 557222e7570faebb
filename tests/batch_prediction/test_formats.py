"""Reading batch input files: JSON Lines and CSV variants, and each bad line named."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from app.batch_prediction.formats import LineError, read_instances
from app.batch_prediction.schemas import InstancesFormat
from app.datasets.formats import IndexFileError
from app.datasets.sources import FetchPolicy


@pytest.fixture
def policy(tmp_path: Path) -> FetchPolicy:
    return FetchPolicy(max_bytes=1024, import_root=tmp_path)


def read(text: str | bytes, instances_format: InstancesFormat, policy: FetchPolicy) -> list:
    data = text.encode() if isinstance(text, str) else text
    return list(read_instances(io.BytesIO(data), instances_format, policy=policy))


def test_jsonl_lines_become_instances(policy, tmp_path):
    text = (
        '\ufeff{"content": "gs://b/a.jpg", "mimeType": "image/jpeg"}\r\n'
        "\r\n"
        f'{{"content": " {tmp_path}/b.png "}}\n'
        f'{{"content": "file://{tmp_path}/c.jpg", "mimeType": null}}'
    )
    assert read(text, "jsonl", policy) == [
        {"content": "gs://b/a.jpg", "mimeType": "image/jpeg"},
        {"content": f"{tmp_path}/b.png"},
        {"content": f"file://{tmp_path}/c.jpg"},
    ]


def test_csv_rows_with_or_without_a_header_become_instances(policy, tmp_path):
    assert read("CONTENT\ngs://b/a.jpg\n", "csv", policy) == [{"content": "gs://b/a.jpg"}]
    assert read("Uri\r\n\r\ngs://b/a.jpg,\r\n", "csv", policy) == [{"content": "gs://b/a.jpg"}]
    text = f'gs://b/a.jpg\n"{tmp_path}/with, comma.jpg"\n'
    assert read(text, "csv", policy) == [
        {"content": "gs://b/a.jpg"},
        {"content": f"{tmp_path}/with, comma.jpg"},
    ]
    # Only a first row is a header; later, "uri" is an image reference like any other.
    [good, bad] = read("gs://b/a.jpg\nuri\n", "csv", policy)
    assert good == {"content": "gs://b/a.jpg"}
    assert isinstance(bad, LineError) and (bad.line, bad.field) == (2, "content")


def test_every_bad_line_is_named_with_its_field(policy):
    text = "\n".join(
        [
            '{"content": "gs://b/a.jpg"}',
            "not json",
            '"a string"',
            '{"mimeType": "image/png"}',
            '{"content": 7}',
            '{"content": "gs://bucket-only"}',
            '{"content": "gs://b/a.jpg", "mimeType": ["x"]}',
            '{"content": "gs://b/a.jpg", "labels": []}',
            '{"content": "C:\\\\photos\\\\a.jpg"}',
        ]
    )
    found = read(text, "jsonl", policy)
    assert found[0] == {"content": "gs://b/a.jpg"}
    assert [(e.line, e.field) for e in found[1:]] == [
        (2, None),
        (3, None),
        (4, "content"),
        (5, "content"),
        (6, "content"),
        (7, "mimeType"),
        (8, "labels"),
        (9, "content"),
    ]
    messages = [e.message for e in found[1:]]
    assert "not valid JSON" in messages[0] and "JSON object" in messages[1]
    assert "gs://bucket/path/to/object" in messages[4] and "Windows" in messages[7]


def test_local_paths_need_the_import_root(tmp_path):
    outside = FetchPolicy(max_bytes=1024, import_root=tmp_path / "root")
    [error] = read(f"{tmp_path}/a.jpg\n", "csv", outside)
    assert isinstance(error, LineError) and "outside the import root" in error.message
    [error] = read(f"{tmp_path}/a.jpg\n", "csv", FetchPolicy(max_bytes=1024))
    assert isinstance(error, LineError) and "EDGE_AUTOML_IMPORT_ROOT" in error.message


def test_a_file_that_is_not_text_is_refused_naming_the_line(policy):
    with pytest.raises(IndexFileError, match="line 2 is not valid UTF-8"):
        read(b"gs://b/a.jpg\n\xff\xfe\n", "csv", policy)
    [error] = read('gs://b/a.jpg,"unclosed\n', "csv", policy)
    assert isinstance(error, LineError) and error.line == 1

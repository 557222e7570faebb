"""The committed OpenAPI document is the contract: current, complete, and usable by a client.

The last tests generate the Python client with ``openapi-python-client`` from the committed
file, as a user would, and drive a real server with it.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.cli import openapi_document
from app.jobs import service
from tests.fixtures.server import LiveServer
from tests.support.openapi_client import GeneratedClient, generate_client

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = REPO_ROOT / "openapi" / "openapi.json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ERROR_BODY_REF = "#/components/schemas/ErrorBody"
CAMEL_CASE = re.compile(r"[a-z][a-zA-Z0-9]*")


@pytest.fixture(scope="session")
def document_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Building the app opens the default blob store under the cwd: keep that out of the repo.
    with contextlib.chdir(tmp_path_factory.mktemp("openapi-cwd")):
        return openapi_document()


@pytest.fixture(scope="session")
def document(document_text: str) -> dict[str, Any]:
    return json.loads(document_text)


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeneratedClient]:
    """The client generated from the committed file, once per test session."""
    client = generate_client(COMMITTED, tmp_path_factory.mktemp("openapi-client"))
    yield client
    client.unload()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node and node["$ref"].startswith("#/components/responses/"):
        node = document["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
    return node


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` inside a schema, however deeply nested (anyOf, items...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


# -- the document --------------------------------------------------------------------------


def test_committed_document_is_current(document_text: str) -> None:
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    if committed != document_text:
        diff = difflib.unified_diff(
            committed.splitlines(), document_text.splitlines(), "committed", "code", lineterm=""
        )
        pytest.fail(
            "openapi/openapi.json is out of date: run 'edge-automl openapi' and commit it\n"
            + "\n".join(list(diff)[:80]),
            pytrace=False,
        )


def test_every_v1_operation_documents_an_error_body(document: dict[str, Any]) -> None:
    v1 = [(m, p, op) for m, p, op in operations(document) if p.startswith("/v1/")]
    assert v1, "no /v1/ operations in the document"
    undocumented = [
        f"{method} {path}"
        for method, path, operation in v1
        if not any(
            code.startswith("4") and ERROR_BODY_REF in refs(resolve(document, response))
            for code, response in operation.get("responses", {}).items()
        )
    ]
    assert not undocumented, (
        f"these operations document no 4xx ErrorBody response; add "
        f"responses=error_responses(...) to the route: {undocumented}"
    )


def test_every_operation_has_a_description(document: dict[str, Any]) -> None:
    # FastAPI always fills "summary" from the function name, so only the description shows
    # whether the route has the docstring the API docs are made of.
    missing = [
        f"{method} {path}"
        for method, path, operation in operations(document)
        if not operation.get("description", "").strip()
    ]
    assert not missing, f"routes without a docstring: {missing}"


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    # The generator names a module after each operationId and silently overwrites duplicates.
    ids: list[str] = [operation.get("operationId", "") for _, _, operation in operations(document)]
    assert all(ids), "an operation has no operationId"
    assert len(ids) == len(set(ids)), (
        f"duplicate operationIds: {sorted(set(i for i in ids if ids.count(i) > 1))}"
    )


def test_json_names_are_camel_case(document: dict[str, Any]) -> None:
    wrong = [
        f"{schema_name}.{name}"
        for schema_name, schema in document["components"]["schemas"].items()
        for name in schema.get("properties", {})
        # "@type" names the message inside Google's Any (Firebase ML's operations carry one).
        if not CAMEL_CASE.fullmatch(name) and name != "@type"
    ]
    wrong += [
        f"{method} {path} ?{parameter['name']}"
        for method, path, operation in operations(document)
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query" and not CAMEL_CASE.fullmatch(parameter["name"])
    ]
    assert not wrong, f"not camelCase: {wrong}"


def test_error_body_is_googles_shape(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    body = schemas["ErrorBody"]
    assert body["required"] == ["error"]
    status = schemas[body["properties"]["error"]["$ref"].rsplit("/", 1)[1]]
    assert set(status["properties"]) == {"code", "status", "message", "details"}
    assert {"code", "status", "message"} <= set(status["required"])


# -- the generated client ------------------------------------------------------------------


def test_generated_client_has_every_operation(
    generated: GeneratedClient, document: dict[str, Any]
) -> None:
    for method, path, _ in operations(document):
        generated.endpoint(method, path)


def test_generated_client_checks_health(
    generated: GeneratedClient, live_server: LiveServer
) -> None:
    with generated.client(live_server.url) as client:
        health = generated.endpoint("GET", "/healthz").sync(client=client)

    assert isinstance(health, generated.models.Health)
    assert health.status == "ok"


def test_generated_client_gets_and_cancels_an_operation(
    generated: GeneratedClient,
    live_server: LiveServer,
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory.begin() as session:
        operation_id = service.enqueue(session, kind="noop").id
    get = generated.endpoint("GET", "/v1/operations/{operationId}")
    cancel = generated.endpoint("POST", "/v1/operations/{operationId}:cancel")
    queued, cancelled = generated.models.JobState.QUEUED, generated.models.JobState.CANCELLED

    with generated.client(live_server.url) as client:
        operation = get.sync(operation_id, client=client)
        assert isinstance(operation, generated.models.OperationRead)
        assert operation.id == operation_id
        assert operation.name == f"operations/{operation_id}"
        assert operation.done is False
        assert operation.metadata.state == queued
        assert operation.metadata.kind == "noop"

        answer = cancel.sync_detailed(operation_id, client=client)
        assert answer.status_code == 200, answer.content
        assert isinstance(answer.parsed, generated.models.OperationRead)
        assert answer.parsed.metadata.state == cancelled
        assert answer.parsed.done is True

        again = get.sync(operation_id, client=client)
        assert isinstance(again, generated.models.OperationRead)
        assert again.metadata.state == cancelled
        assert again.error.status == "CANCELLED"


def test_generated_client_parses_errors_as_error_body(
    generated: GeneratedClient, live_server: LiveServer
) -> None:
    with generated.client(live_server.url) as client:
        answer = generated.endpoint("GET", "/v1/operations/{operationId}").sync_detailed(
            "no-such-operation", client=client
        )

    assert answer.status_code == 404
    assert isinstance(answer.parsed, generated.models.ErrorBody)
    assert answer.parsed.error.code == 404
    assert answer.parsed.error.status == "NOT_FOUND"
    assert "no-such-operation" in answer.parsed.error.message


def test_generated_client_manages_datasets_and_images(
    generated: GeneratedClient, live_server: LiveServer
) -> None:
    from tests.datasets.conftest import make_image

    models = generated.models
    with generated.client(live_server.url) as client:
        created = generated.endpoint("POST", "/v1/datasets").sync(
            client=client, body=models.DatasetCreate(display_name="from the client")
        )
        assert isinstance(created, models.DatasetRead)
        assert created.name == f"datasets/{created.id}"
        assert created.image_count == 0

        upload = generated.endpoint("POST", "/v1/datasets/{datasetId}/images")
        files = generated.package.types.File(
            payload=io.BytesIO(make_image(3)), file_name="a.jpg", mime_type="image/jpeg"
        )
        result = upload.sync(created.id, client=client, body=models.BodyUploadImages(files=[files]))
        assert isinstance(result, models.UploadResult)
        [image] = result.images
        assert image.labeled is False

        replace = generated.endpoint("PUT", "/v1/datasets/{datasetId}/images/{imageId}/annotations")
        box = models.BoxIn(label="cat", x_min=0.1, y_min=0.1, x_max=0.5, y_max=0.5)
        labelled = replace.sync(
            created.id, image.id, client=client, body=models.AnnotationsReplace(boxes=[box])
        )
        assert isinstance(labelled, models.ImageRead)
        assert [b.label for b in labelled.boxes] == ["cat"]

        content = generated.endpoint("GET", "/v1/datasets/{datasetId}/images/{imageId}:content")
        answer = content.sync_detailed(created.id, image.id, client=client)
        assert answer.status_code == 200 and answer.content == make_image(3)

        stats = generated.endpoint("GET", "/v1/datasets/{datasetId}/stats").sync(
            created.id, client=client
        )
        assert isinstance(stats, models.DatasetStats)
        assert stats.box_count == 1

        bad = replace.sync_detailed(
            created.id,
            image.id,
            client=client,
            body=models.AnnotationsReplace(
                boxes=[models.BoxIn(label="cat", x_min=0.6, y_min=0.1, x_max=0.5, y_max=0.5)]
            ),
        )
        assert bad.status_code == 400
        assert isinstance(bad.parsed, models.ErrorBody)
        assert bad.parsed.error.status == "INVALID_ARGUMENT"

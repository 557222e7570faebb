"""The HTTP shape every route shares: Google's error JSON, paging, size limits, request ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from app.jobs import service as jobs_service
from app.main import create_app


def test_unknown_route_is_google_shaped_404(client):
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": 404, "status": "NOT_FOUND", "message": "Not Found", "details": []}
    }


def test_wrong_method_is_405_in_the_same_shape(client):
    response = client.delete("/healthz")
    assert response.status_code == 405
    assert response.json()["error"]["status"] == "METHOD_NOT_ALLOWED"


def test_validation_error_names_the_field(client):
    response = client.get("/v1/operations", params={"pageSize": "many"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert "pageSize" in error["message"]
    violations = error["details"][0]["fieldViolations"]
    assert violations[0]["field"] == "pageSize"


def test_page_size_limit_is_enforced(client):
    response = client.get("/v1/operations", params={"pageSize": 101})
    assert response.status_code == 400
    assert "between 1 and 100" in response.json()["error"]["message"]


def test_paging_walks_every_item_once_newest_first(client, session_factory):
    with session_factory.begin() as session:
        ids = [jobs_service.enqueue(session, kind="noop").id for _ in range(7)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"pageSize": 3, **({"pageToken": token} if token else {})}
        body = client.get("/v1/operations", params=params).json()
        seen += [op["id"] for op in body["operations"]]
        pages += 1
        token = body.get("nextPageToken")
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    times = [client.get(f"/v1/operations/{i}").json()["createTime"] for i in seen]
    assert times == sorted(times, reverse=True)


def test_page_token_is_checked(client, session_factory):
    bad = client.get("/v1/operations", params={"pageToken": "garbage"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "pageToken"
    with session_factory.begin() as session:
        for _ in range(3):
            jobs_service.enqueue(session, kind="noop")
    token = client.get("/v1/operations", params={"pageSize": 1}).json()["nextPageToken"]
    other_filter = client.get(
        "/v1/operations", params={"pageSize": 1, "pageToken": token, "state": "QUEUED"}
    )
    assert other_filter.status_code == 400
    assert "different filter" in other_filter.json()["error"]["message"]


def test_state_filter(client, session_factory):
    with session_factory.begin() as session:
        queued = jobs_service.enqueue(session, kind="noop").id
        cancelled = jobs_service.enqueue(session, kind="noop").id
        jobs_service.cancel(session, job_id=cancelled)
    body = client.get("/v1/operations", params={"state": "CANCELLED"}).json()
    assert [op["id"] for op in body["operations"]] == [cancelled]
    assert queued not in [op["id"] for op in body["operations"]]
    unknown = client.get("/v1/operations", params={"state": "DONE"})
    assert unknown.status_code == 400


def test_request_id_is_returned_and_kept(client):
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    kept = client.get("/healthz", headers={"x-request-id": "trace-123"})
    assert kept.headers["x-request-id"] == "trace-123"


@pytest.fixture
def small_client(settings, engine, session_factory) -> Iterator[TestClient]:
    limited = settings.model_copy(update={"max_request_bytes": 2048, "max_json_bytes": 1024})
    app = create_app(limited, engine=engine)

    @app.post("/body-size")
    async def body_size(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    with TestClient(app) as client:
        yield client


def test_body_under_the_limit_passes(small_client):
    response = small_client.post("/body-size", content=b"z" * 2000)
    assert response.json() == {"size": 2000}


def test_declared_oversized_body_is_413_naming_the_limit(small_client):
    response = small_client.post(
        "/v1/operations/x:cancel", content=b"x" * 4096, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == 413
    assert "2048 bytes" in error["message"]


def test_json_has_its_own_smaller_limit(small_client):
    response = small_client.post(
        "/v1/operations/x:cancel",
        content=b"[" + b"1," * 700 + b"1]",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert (
        "JSON request body exceeds the limit of 1024 bytes" in response.json()["error"]["message"]
    )


def test_streamed_oversized_body_is_413(small_client):
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    response = small_client.post(
        "/body-size", content=chunks(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 413
    assert "2048 bytes" in response.json()["error"]["message"]


def test_bug_is_a_500_in_google_shape_with_request_id(app, client):
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as quiet:
        response = quiet.get("/boom", headers={"x-request-id": "req-42"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["status"] == "INTERNAL"
    assert "req-42" in error["message"]
    assert "a bug" not in error["message"], "internals are logged, not sent"

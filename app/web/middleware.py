"""Pure ASGI middleware: request ids, access logs and metrics, request-size limits."""

from __future__ import annotations

import json
import logging
import time
import uuid

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.health.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS
from app.kit.logs import request_id_var

log = logging.getLogger("app.http")

REQUEST_ID_HEADER = b"x-request-id"


class RequestContextMiddleware:
    """Gives each request an id (kept from ``X-Request-Id`` when sent), logs and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = incoming[:64] if incoming.isprintable() and incoming else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug. Log it whole and answer in the usual shape with the id that finds the
            # log line, then re-raise so the server (and a test client) sees it too.
            log.exception("http.request.unhandled", extra={"path": scope["path"]})
            if not started_response:
                await _send_error(
                    send, 500, "INTERNAL", f"internal error; request id {request_id}", request_id
                )
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(method=method, route=route).observe(elapsed)
            log.info(
                "http.request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Answers 413, naming the limit, for bodies over the configured size.

    A declared ``Content-Length`` is refused before any byte is read; a chunked body is
    counted as it streams and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_json_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        is_json = headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"
        limit = self.max_json_bytes if is_json else self.max_bytes
        what = "JSON request body" if is_json else "request body"
        message = f"{what} exceeds the limit of {limit} bytes"

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(send, 413, "OUT_OF_RANGE", message)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise HTTPException(status_code=413, detail=message)
            return event

        await self.app(scope, counting_receive, send)


async def _send_error(
    send: Send, code: int, status: str, message: str, request_id: str | None = None
) -> None:
    """Google's error body, sent from middleware where no exception handler can help."""
    body = json.dumps(
        {"error": {"code": code, "status": status, "message": message, "details": []}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if request_id:
        headers.append((REQUEST_ID_HEADER, request_id.encode()))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})

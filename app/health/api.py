"""Probes for orchestrators and the Prometheus scrape endpoint. No authentication."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.health import metrics, service
from app.kit.schemas import ApiModel

router = APIRouter(tags=["health"])


class Health(ApiModel):
    status: str


class ReadinessCheck(ApiModel):
    name: str
    ok: bool
    detail: str


class Readiness(ApiModel):
    status: str
    checks: list[ReadinessCheck]


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is not ready"}},
)
def readyz(request: Request) -> JSONResponse:
    """Ready for traffic: database reachable, migrations at head, blob store writable."""
    state = request.app.state
    checks = service.check_database(state.engine, head=state.schema_head)
    checks.append(service.check_blob_store(state.blobs))
    ready = all(check.ok for check in checks)
    body = Readiness(
        status="ready" if ready else "unready",
        checks=[ReadinessCheck(name=c.name, ok=c.ok, detail=c.detail) for c in checks],
    )
    return JSONResponse(body.model_dump(by_alias=True), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        }
    },
)
def prometheus_metrics(request: Request) -> Response:
    """Request counts and latency, queue depth by state, job durations."""
    body = metrics.render(request.app.state.session_factory)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

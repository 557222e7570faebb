"""Jobs as Google-style long-running operations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from app.auth.dependencies import require
from app.auth.service import Scope
from app.db.job import JobState
from app.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    error_responses,
)
from app.jobs import service
from app.jobs.schemas import OperationList, OperationRead
from app.kit.pagination import check_page_size, decode_token, encode_token
from app.web.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["operations"])

AUTH_ERRORS = (Unauthenticated, PermissionDenied)
OperationId = Annotated[str, Path(alias="operationId")]


@router.get(
    "/operations",
    response_model=OperationList,
    dependencies=[Depends(require(Scope.READ))],
    responses=error_responses(InvalidInput, *AUTH_ERRORS),
)
def list_operations(
    session: SessionDep,
    settings: SettingsDep,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
    state: Annotated[list[JobState], Query(description="Only operations in these states.")] = [],  # noqa: B006 - FastAPI copies defaults
) -> OperationList:
    """List operations, newest first."""
    filter_key = ",".join(sorted(s.value for s in state))
    size = check_page_size(page_size, default=settings.default_page_size)
    after = decode_token(page_token, filter_key=filter_key)
    jobs, cursor = service.list_jobs(
        session, page_size=size, after=after, states=[s.value for s in state]
    )
    return OperationList(
        operations=[OperationRead.from_job(job) for job in jobs],
        next_page_token=encode_token(cursor, filter_key=filter_key) if cursor else None,
    )


@router.get(
    "/operations/{operationId}",
    response_model=OperationRead,
    dependencies=[Depends(require(Scope.READ))],
    responses=error_responses(NotFound, *AUTH_ERRORS),
)
def get_operation(operation_id: OperationId, session: SessionDep) -> OperationRead:
    """Get an operation: its progress while running, then its error or response."""
    return OperationRead.from_job(service.get(session, job_id=operation_id))


@router.post(
    "/operations/{operationId}:cancel",
    response_model=OperationRead,
    dependencies=[Depends(require(Scope.WRITE))],
    responses=error_responses(NotFound, FailedPrecondition, *AUTH_ERRORS),
)
def cancel_operation(operation_id: OperationId, session: SessionDep) -> OperationRead:
    """Cancel an operation: a queued one at once, a running one at its next checkpoint."""
    return OperationRead.from_job(service.cancel(session, job_id=operation_id))

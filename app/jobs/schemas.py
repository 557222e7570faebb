"""Jobs as Google-style long-running operations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from app.db.job import Job, JobState
from app.kit.schemas import ApiModel


class OperationError(ApiModel):
    code: int = Field(description="google.rpc.Code number, e.g. 1 CANCELLED, 13 INTERNAL.")
    status: str | None = None
    message: str
    details: list[dict[str, Any]] | None = None


class OperationMetadata(ApiModel):
    kind: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    progress_details: dict[str, Any] = Field(default_factory=dict)
    attempts: int
    max_attempts: int
    last_error: OperationError | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


class OperationRead(ApiModel):
    id: str
    name: str = Field(description="operations/{id}")
    done: bool
    metadata: OperationMetadata
    error: OperationError | None = None
    response: dict[str, Any] | None = None
    create_time: datetime
    update_time: datetime

    @classmethod
    def from_job(cls, job: Job) -> OperationRead:
        state = JobState(job.state)
        return cls(
            id=job.id,
            name=f"operations/{job.id}",
            done=state.is_terminal,
            metadata=OperationMetadata(
                kind=job.kind,
                state=state,
                progress=job.progress,
                progress_details=job.progress_details,
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                last_error=OperationError(**job.last_error) if job.last_error else None,
                start_time=job.started_at,
                end_time=job.finished_at,
            ),
            error=OperationError(**job.error) if job.error else None,
            response=job.result if state == JobState.SUCCEEDED else None,
            create_time=job.created_at,
            update_time=job.updated_at,
        )


class OperationList(ApiModel):
    operations: list[OperationRead]
    next_page_token: str | None = None

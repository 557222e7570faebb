"""Batch prediction on the wire: Vertex AI's BatchPredictionJob where it fits (camelCase)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.db.dataset_image import Split
from app.db.job import JobState
from app.inference.schemas import PredictParameters
from app.jobs.schemas import OperationError
from app.kit.schemas import ApiModel

InstancesFormat = Literal["jsonl", "csv"]


class BatchJobState(enum.StrEnum):
    """Vertex AI's job states; the queue job's QUEUED is PENDING here."""

    JOB_STATE_PENDING = "JOB_STATE_PENDING"
    JOB_STATE_RUNNING = "JOB_STATE_RUNNING"
    JOB_STATE_SUCCEEDED = "JOB_STATE_SUCCEEDED"
    JOB_STATE_FAILED = "JOB_STATE_FAILED"
    JOB_STATE_CANCELLING = "JOB_STATE_CANCELLING"
    JOB_STATE_CANCELLED = "JOB_STATE_CANCELLED"

    @classmethod
    def of(cls, state: JobState) -> BatchJobState:
        return cls(f"JOB_STATE_{'PENDING' if state == JobState.QUEUED else state.value}")

    @property
    def job_state(self) -> JobState:
        name = self.value.removeprefix("JOB_STATE_")
        return JobState.QUEUED if name == "PENDING" else JobState(name)


class GcsSource(ApiModel):
    uris: list[str] = Field(
        min_length=1,
        max_length=100,
        description="Input files, read in order: gs:// URIs, or local paths under "
        "EDGE_AUTOML_IMPORT_ROOT, or https:// where EDGE_AUTOML_IMPORT_ALLOW_HTTPS allows.",
    )


class DatasetSource(ApiModel):
    dataset_id: str = Field(min_length=1, max_length=60)
    split: Split | None = Field(default=None, description="Only this split; default: every image.")


class FileUpload(ApiModel):
    filename: str = Field(description="The name of the file uploaded with the request.")


class InputConfig(ApiModel):
    """One source: ``gcsSource`` with ``instancesFormat``, or ``datasetSource`` (or, in a
    multipart request, the uploaded file)."""

    instances_format: InstancesFormat | None = Field(
        default=None,
        description='"jsonl": lines {"content": "<uri>", "mimeType": "image/jpeg"}; "csv": one '
        "column of image URIs, optionally under a header content or uri.",
    )
    gcs_source: GcsSource | None = None
    dataset_source: DatasetSource | None = Field(
        default=None, description="Predict the images of one of this service's datasets."
    )


class InputConfigRead(InputConfig):
    file_upload: FileUpload | None = Field(
        default=None, description="Set when the input file was uploaded with the request."
    )


class OutputConfig(ApiModel):
    predictions_format: Literal["jsonl"] = "jsonl"
    gcs_destination: dict[str, Any] | None = Field(
        default=None,
        description="Not supported: results stay in the service's blob store "
        "(outputInfo.outputDirectory, and GET /v1/batchPredictionJobs/{id}/predictions).",
    )


class BatchPredictionJobCreate(ApiModel):
    display_name: str = Field(min_length=1, max_length=200)
    model: str = Field(
        min_length=1, max_length=70, description="The model's id (or models/{modelId})."
    )
    model_version: int | None = Field(default=None, ge=1, description="Default: the latest.")
    input_config: InputConfig
    model_parameters: PredictParameters = Field(
        default_factory=PredictParameters, description="As :predict's parameters."
    )
    output_config: OutputConfig | None = None


class CompletionStats(ApiModel):
    successful_count: int = Field(description="Images predicted.")
    failed_count: int = Field(description="Images that could not be read or decoded.")
    incomplete_count: int = Field(description="Images not processed (yet).")


class OutputInfo(ApiModel):
    output_directory: str = Field(
        description="Where the result files are: gs://… or file://… in the blob store."
    )
    prediction_file_count: int = Field(
        description="Finished files predictions_00001.jsonl, predictions_00002.jsonl, …"
    )
    predictions_path: str = Field(description="The API path that streams every finished result.")


class BatchPredictionJobRead(ApiModel):
    id: str
    name: str = Field(description="batchPredictionJobs/{id}")
    display_name: str
    model: str = Field(description="The model's id.")
    model_version: int
    artifact_sha256: str = Field(description="The ONNX file the job runs.")
    input_config: InputConfigRead
    model_parameters: PredictParameters
    instance_count: int
    state: BatchJobState
    error: OperationError | None = None
    completion_stats: CompletionStats
    output_info: OutputInfo
    operation_id: str
    operation_name: str = Field(description="operations/{operationId}: the queue job.")
    attempts: int
    create_time: datetime
    update_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None


class BatchPredictionJobList(ApiModel):
    batch_prediction_jobs: list[BatchPredictionJobRead]
    next_page_token: str | None = None

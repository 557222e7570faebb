"""Training jobs on the wire (camelCase, Vertex AI's words where it has them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.db.job import JobState
from app.jobs.schemas import OperationError
from app.kit.schemas import ApiModel

MIN_BUDGET_MILLI_NODE_HOURS = 10
MAX_BUDGET_MILLI_NODE_HOURS = 100_000
DEFAULT_BUDGET_MILLI_NODE_HOURS = 24_000
# A local node-hour is one hour of the worker's wall clock: 1,000 milli node hours = 3,600 s.
SECONDS_PER_MILLI_NODE_HOUR = 3.6
MAX_SEED = 2**32 - 1

BUDGET_DESCRIPTION = (
    f"Training budget; 1,000 = one node-hour, and locally a node-hour is one hour of the "
    f"worker's wall-clock training time. {MIN_BUDGET_MILLI_NODE_HOURS} to "
    f"{MAX_BUDGET_MILLI_NODE_HOURS:,}. Training stops at the budget, or earlier once validation "
    "mAP stops improving unless disableEarlyStopping."
)

StopReason = Literal["BUDGET_REACHED", "MODEL_CONVERGED"]
BackendName = Literal["local", "vertex-automl", "vertex-custom"]
BACKEND_DESCRIPTION = (
    "Where the job trains: local (a worker of this service), vertex-automl (Vertex AI AutoML; "
    "the model is its TFLite export) or vertex-custom (this service's trainer as a Vertex AI "
    "custom job). Unset: the service's EDGE_AUTOML_TRAINING_BACKEND."
)


class TrainingJobCreate(ApiModel):
    dataset_id: str = Field(min_length=1, max_length=60)
    display_name: str = Field(min_length=1, max_length=200)
    model_type: str = Field(
        description="MOBILE_TF_LOW_LATENCY_1, MOBILE_TF_VERSATILE_1 or MOBILE_TF_HIGH_ACCURACY_1 "
        "(or mobile-low-latency, mobile-versatile, mobile-high-accuracy)."
    )
    budget_milli_node_hours: int = Field(
        default=DEFAULT_BUDGET_MILLI_NODE_HOURS, description=BUDGET_DESCRIPTION
    )
    disable_early_stopping: bool = False
    base_model_id: str | None = Field(
        default=None,
        description="Start from this model's latest version (incremental training); its "
        "labels must be the dataset's.",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    backend: BackendName | None = Field(default=None, description=BACKEND_DESCRIPTION)


class TrainingProgress(ApiModel):
    epoch: int
    fraction: float = Field(description="Share of the planned schedule done, 0 to 1.")
    elapsed_milli_node_hours: float
    remaining_milli_node_hours: float
    losses: dict[str, float] = Field(description="The latest training losses by name.")
    validation_mean_average_precision: float | None = Field(
        default=None, description="mAP@0.5 on the VALIDATION split after the latest epoch."
    )
    best_validation_mean_average_precision: float | None = None
    images_per_second: float


class ImageCounts(ApiModel):
    train: int
    validation: int
    test: int


class TrainingJobRead(ApiModel):
    id: str
    name: str = Field(description="trainingJobs/{id}")
    display_name: str
    dataset_id: str
    model_type: str
    state: JobState = Field(description="QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED")
    budget_milli_node_hours: int
    cost_milli_node_hours: int | None = Field(
        default=None, description="Budget used, never above budgetMilliNodeHours; once succeeded."
    )
    successful_stop_reason: StopReason | None = None
    disable_early_stopping: bool
    base_model_id: str | None = None
    seed: int
    labels: list[str] = Field(description="Label names; a label's position is its class id.")
    image_counts: ImageCounts = Field(description="Labelled images per split in the snapshot.")
    progress: TrainingProgress | None = None
    operation_id: str
    operation_name: str = Field(description="operations/{operationId}: the queue job.")
    attempts: int
    error: OperationError | None = None
    model_id: str | None = Field(default=None, description="The trained model, once succeeded.")
    backend: BackendName = Field(description=BACKEND_DESCRIPTION)
    remote_state: str | None = Field(
        default=None,
        description="The remote run's last seen state (PIPELINE_STATE_RUNNING, "
        "JOB_STATE_SUCCEEDED, ...); remote backends only.",
    )
    remote_resources: dict[str, Any] | None = Field(
        default=None,
        description="The remote resources made for the job, by role (datasetName, "
        "pipelineName, modelName, customJobName, ...); remote backends only.",
    )
    last_poll_error: OperationError | None = Field(
        default=None,
        description="The last transient error polling the remote run (retried with backoff); "
        "cleared by the next good poll.",
    )
    create_time: datetime
    update_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None


class TrainingJobList(ApiModel):
    training_jobs: list[TrainingJobRead]
    next_page_token: str | None = None

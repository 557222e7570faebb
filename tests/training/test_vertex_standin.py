"""The Vertex AI stand-in (tests/fixtures/vertex.py) against the real aiplatform_v1 clients:
if these pass, the backends' tests talk to something that answers like Vertex does."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1 as v1
from google.cloud import storage
from google.protobuf import json_format

from tests.fixtures.vertex import (
    BOUNDING_BOX_IMPORT_SCHEMA,
    IMAGE_DATASET_SCHEMA,
    OBJECT_DETECTION_DEFINITION,
    OBJECT_DETECTION_METRICS_SCHEMA,
    FakeVertex,
)

CLIENTS = {
    "datasets": v1.DatasetServiceClient,
    "pipelines": v1.PipelineServiceClient,
    "models": v1.ModelServiceClient,
    "jobs": v1.JobServiceClient,
}


def clients(fake: FakeVertex, transport: str = "rest") -> dict[str, Any]:
    return {
        key: cls(
            transport=transport,
            client_options={"api_endpoint": fake.endpoint},
            credentials=AnonymousCredentials(),
        )
        for key, cls in CLIENTS.items()
    }


@pytest.fixture
def api(vertex: FakeVertex) -> dict[str, Any]:
    return clients(vertex)


def upload(gcs_client: storage.Client, bucket: str, name: str, data: bytes | str) -> str:
    gcs_client.bucket(bucket).blob(name).upload_from_string(data)
    return f"gs://{bucket}/{name}"


def create_dataset(api: dict[str, Any], fake: FakeVertex) -> str:
    operation = api["datasets"].create_dataset(
        parent=fake.parent,
        dataset=v1.Dataset(display_name="shapes", metadata_schema_uri=IMAGE_DATASET_SCHEMA),
    )
    return str(operation.result(timeout=10).name)


def import_csv(api: dict[str, Any], dataset: str, csv_uri: str) -> Any:
    return api["datasets"].import_data(
        name=dataset,
        import_configs=[
            v1.ImportDataConfig(
                gcs_source=v1.GcsSource(uris=[csv_uri]),
                import_schema_uri=BOUNDING_BOX_IMPORT_SCHEMA,
            )
        ],
    )


def imported_dataset(
    api: dict[str, Any], fake: FakeVertex, gcs_client: storage.Client, bucket: str
) -> str:
    a = upload(gcs_client, bucket, "images/a.jpg", b"jpeg a")
    b = upload(gcs_client, bucket, "images/b%401.jpg", b"jpeg b")
    csv_uri = upload(
        gcs_client,
        bucket,
        "import.csv",
        f"TRAINING,{a},circle,0.1,0.2,,,0.5,0.6,,\n"
        f"TEST,{b},square,0.1,0.1,0.9,0.1,0.9,0.9,0.1,0.9\n"
        f"VALIDATION,{b}\n",
    )
    dataset = create_dataset(api, fake)
    import_csv(api, dataset, csv_uri).result(timeout=10)
    return dataset


def create_pipeline(api: dict[str, Any], fake: FakeVertex, dataset: str, **changes: Any) -> Any:
    pipeline = {
        "display_name": "train-1",
        "training_task_definition": OBJECT_DETECTION_DEFINITION,
        "training_task_inputs": {
            "modelType": "MOBILE_TF_LOW_LATENCY_1",
            "budgetMilliNodeHours": 20000,
            "disableEarlyStopping": False,
        },
        "input_data_config": {
            "dataset_id": dataset.rsplit("/", 1)[1],
            "fraction_split": {
                "training_fraction": 0.8,
                "validation_fraction": 0.1,
                "test_fraction": 0.1,
            },
        },
        "model_to_upload": {"display_name": "model-1"},
        **changes,
    }
    return api["pipelines"].create_training_pipeline(
        parent=fake.parent, training_pipeline=v1.TrainingPipeline(pipeline)
    )


def test_import_reads_the_csv_from_gcs_and_counts_the_images(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)

    assert api["datasets"].get_dataset(name=dataset).data_item_count == 2
    (record,) = vertex.imports[dataset]
    assert record.import_schema_uri == BOUNDING_BOX_IMPORT_SCHEMA
    assert record.rows[0] == ("TRAINING", f"gs://{gcs_bucket}/images/a.jpg", "circle",
                              (0.1, 0.2, 0.5, 0.6))  # fmt: skip
    assert record.rows[1][3] == (0.1, 0.1, 0.9, 0.9)
    assert record.rows[2][2:] == ("", None)
    methods = [method for method, _, _ in vertex.requests]
    assert methods == ["CreateDataset", "GetOperation", "ImportData", "GetOperation", "GetDataset"]
    assert vertex.requests[2][2]["importConfigs"][0]["importSchemaUri"] == (
        BOUNDING_BOX_IMPORT_SCHEMA
    )


def test_an_import_with_a_missing_image_or_a_bad_box_fails_with_invalid_argument(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    a = upload(gcs_client, gcs_bucket, "a.jpg", b"jpeg")
    csv_uri = upload(
        gcs_client,
        gcs_bucket,
        "bad.csv",
        f"TRAINING,{a},circle,0.1,0.2,,,0.5,0.6,,\n"
        f"TRAINING,gs://{gcs_bucket}/missing.jpg,circle,0.1,0.2,,,0.5,0.6,,\n"
        f"TEST,{a},circle,0.7,0.2,,,0.5,x,,\n",
    )
    dataset = create_dataset(api, vertex)

    with pytest.raises(exceptions.InvalidArgument) as raised:
        import_csv(api, dataset, csv_uri).result(timeout=10)

    assert "missing.jpg does not exist" in raised.value.message
    assert "bad.csv line 3" in raised.value.message
    assert api["datasets"].get_dataset(name=dataset).data_item_count == 0


def test_a_pipeline_runs_through_its_script_and_uploads_a_model_to_evaluate_and_export(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    vertex.script_pipeline(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    vertex.export_file = b"\x1c\x00\x00\x00TFL3 a model"

    created = create_pipeline(api, vertex, dataset)
    assert created.state == v1.PipelineState.PIPELINE_STATE_PENDING
    states = [api["pipelines"].get_training_pipeline(name=created.name) for _ in range(5)]

    assert [s.state.name for s in states] == [
        "PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_RUNNING",
        "PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_SUCCEEDED",
    ]  # fmt: skip
    done = states[-1]
    inputs = json_format.MessageToDict(v1.TrainingPipeline.pb(done).training_task_inputs)
    assert inputs["budgetMilliNodeHours"] == 20000.0  # a Struct: numbers come back as floats
    assert done.model_to_upload.name.startswith(f"{vertex.parent}/models/")
    metadata = json_format.MessageToDict(v1.TrainingPipeline.pb(done).training_task_metadata)
    assert metadata["costMilliNodeHours"] <= 20000

    model = api["models"].get_model(name=f"{done.model_to_upload.name}@1")
    assert model.display_name == "model-1"
    assert "tflite" in {f.id for f in model.supported_export_formats}
    vertex.evaluation = {**vertex.evaluation, "boundingBoxMeanAveragePrecision": 0.625}
    (evaluation,) = api["models"].list_model_evaluations(parent=model.name)
    assert evaluation.metrics_schema_uri == OBJECT_DETECTION_METRICS_SCHEMA
    metrics = json_format.MessageToDict(v1.ModelEvaluation.pb(evaluation).metrics)
    assert metrics["boundingBoxMeanAveragePrecision"] == 0.625
    first = metrics["boundingBoxMetrics"][0]
    assert set(first) == {"iouThreshold", "meanAveragePrecision", "confidenceMetrics"}
    assert set(first["confidenceMetrics"][0]) == {
        "confidenceThreshold", "recall", "precision", "f1Score",
    }  # fmt: skip
    assert api["models"].get_model_evaluation(name=evaluation.name).name == evaluation.name

    export = api["models"].export_model(
        name=model.name,
        output_config={
            "export_format_id": "tflite",
            "artifact_destination": {"output_uri_prefix": f"gs://{gcs_bucket}/exports/"},
        },
    )
    export.result(timeout=10)
    folder = export.metadata.output_info.artifact_output_uri
    assert folder.startswith(f"gs://{gcs_bucket}/exports/model-")
    blob = folder.removeprefix(f"gs://{gcs_bucket}/") + "/model.tflite"
    assert gcs_client.bucket(gcs_bucket).blob(blob).download_as_bytes() == vertex.export_file


def test_creating_a_pipeline_checks_the_definition_the_dataset_and_the_inputs(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    classification = OBJECT_DETECTION_DEFINITION.replace("object_detection", "classification")

    with pytest.raises(exceptions.BadRequest, match="training_task_definition"):
        create_pipeline(api, vertex, dataset, training_task_definition=classification)
    with pytest.raises(exceptions.NotFound):
        create_pipeline(api, vertex, f"{dataset}0")
    with pytest.raises(exceptions.BadRequest, match="modelType"):
        create_pipeline(api, vertex, dataset, training_task_inputs={"modelType": "TINY"})
    assert vertex.pipelines == {}


def test_a_failed_pipeline_carries_the_scripted_error(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    vertex.script_pipeline(["RUNNING", "FAILED"], error={"code": 8, "message": "Out of quota"})

    name = create_pipeline(api, vertex, dataset).name
    api["pipelines"].get_training_pipeline(name=name)
    failed = api["pipelines"].get_training_pipeline(name=name)

    assert failed.state == v1.PipelineState.PIPELINE_STATE_FAILED
    assert (failed.error.code, failed.error.message) == (8, "Out of quota")
    assert failed.model_to_upload.name == ""


def test_a_cancelled_pipeline_is_cancelled_on_the_next_get_and_cannot_be_cancelled_again(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    vertex.script_pipeline(["RUNNING"])
    name = create_pipeline(api, vertex, dataset).name
    api["pipelines"].get_training_pipeline(name=name)

    api["pipelines"].cancel_training_pipeline(name=name)
    assert vertex.pipelines[name].state == v1.PipelineState.PIPELINE_STATE_CANCELLING
    cancelled = api["pipelines"].get_training_pipeline(name=name)

    assert cancelled.state == v1.PipelineState.PIPELINE_STATE_CANCELLED
    assert cancelled.error.code == 1
    with pytest.raises(exceptions.BadRequest, match="already PIPELINE_STATE_CANCELLED"):
        api["pipelines"].cancel_training_pipeline(name=name)


def test_scripting_again_changes_a_running_pipeline_from_its_next_get(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    vertex.script_pipeline(["RUNNING"])
    name = create_pipeline(api, vertex, dataset).name
    assert api["pipelines"].get_training_pipeline(name=name).state.name.endswith("RUNNING")

    vertex.script_pipeline(["SUCCEEDED"])

    assert api["pipelines"].get_training_pipeline(name=name).state.name.endswith("SUCCEEDED")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (503, exceptions.ServiceUnavailable),
        (429, exceptions.TooManyRequests),
        (404, exceptions.NotFound),
        # Over REST the class follows the HTTP status alone: 403 is Forbidden (PermissionDenied
        # is its gRPC subclass), and 400 is BadRequest whatever the canonical code.
        (403, exceptions.Forbidden),
        ("FAILED_PRECONDITION", exceptions.BadRequest),
        (500, exceptions.InternalServerError),
    ],
)
def test_an_injected_failure_raises_the_matching_exception_once(
    api: dict[str, Any],
    vertex: FakeVertex,
    gcs_client: storage.Client,
    gcs_bucket: str,
    code: int | str,
    error: type[Exception],
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    name = create_pipeline(api, vertex, dataset).name
    vertex.fail_next(method="GetTrainingPipeline", code=code)

    api["datasets"].get_dataset(name=dataset)  # another method is not affected
    with pytest.raises(error, match="injected"):
        api["pipelines"].get_training_pipeline(name=name)

    assert api["pipelines"].get_training_pipeline(name=name).name == name


def test_the_operations_client_retries_an_unavailable_poll_by_itself(
    api: dict[str, Any], vertex: FakeVertex
) -> None:
    """Worth knowing for a poller: api_core's operations client retries UNAVAILABLE on
    GetOperation, so one 503 never reaches the caller; NOT_FOUND does."""
    operation = api["datasets"].create_dataset(
        parent=vertex.parent,
        dataset=v1.Dataset(display_name="d", metadata_schema_uri=IMAGE_DATASET_SCHEMA),
    )
    vertex.fail_next(method="GetOperation", code=503)

    assert operation.done()
    assert [m for m, _, _ in vertex.requests].count("GetOperation") == 2

    again = api["datasets"].delete_dataset(name=operation.result().name)
    vertex.fail_next(method="GetOperation", code=404)
    with pytest.raises(exceptions.NotFound):
        again.done()


def test_a_forgotten_resource_is_not_found(
    api: dict[str, Any], vertex: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    name = create_pipeline(api, vertex, dataset).name
    api["pipelines"].get_training_pipeline(name=name)

    vertex.forget(name)

    with pytest.raises(exceptions.NotFound):
        api["pipelines"].get_training_pipeline(name=name)
    with pytest.raises(exceptions.NotFound):
        api["pipelines"].cancel_training_pipeline(name=name)


def test_offline_refuses_connections_and_comes_back_with_its_state(
    api: dict[str, Any], vertex: FakeVertex
) -> None:
    dataset = create_dataset(api, vertex)

    # Over REST a refused connection is requests' error, not a google.api_core one.
    with vertex.offline(), pytest.raises(requests.exceptions.ConnectionError):
        api["datasets"].get_dataset(name=dataset)

    assert api["datasets"].get_dataset(name=dataset).name == dataset


# A stand-in for the trainer's container: writes argv[1] into GCS, as the real one writes
# its weights, then fails when asked to.
CONTAINER_SCRIPT = """
import os, sys
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
bucket, _, name = sys.argv[1].removeprefix("gs://").partition("/")
client = storage.Client(credentials=AnonymousCredentials(), project="p")
client.bucket(bucket).blob(name).upload_from_string(os.environ["GREETING"] + " " +
                                                    os.environ["AIP_MODEL_DIR"])
if len(sys.argv) > 2:
    sys.exit("trainer: " + sys.argv[2])
"""


def create_custom_job(api: dict[str, Any], fake: FakeVertex, args: list[str]) -> Any:
    job = {
        "display_name": "train-job-1",
        "job_spec": {
            "worker_pool_specs": [
                {
                    "machine_spec": {"machine_type": "n1-standard-8"},
                    "replica_count": 1,
                    "container_spec": {
                        "image_uri": "europe-docker.pkg.dev/p/edge-automl/edge-automl:1",
                        "command": ["edge-automl"],
                        "args": args,
                        "env": [{"name": "GREETING", "value": "hello"}],
                    },
                }
            ],
            "base_output_directory": {"output_uri_prefix": "gs://out/job-1"},
        },
    }
    return api["jobs"].create_custom_job(parent=fake.parent, custom_job=v1.CustomJob(job))


def wait_for_job(api: dict[str, Any], name: str) -> Any:
    deadline = time.monotonic() + 60
    states = []
    while time.monotonic() < deadline:
        job = api["jobs"].get_custom_job(name=name)
        states.append(job.state.name)
        if job.state.name in {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"}:
            return job, states
        time.sleep(0.1)
    raise AssertionError(f"the custom job is still {states[-1]}")


@pytest.mark.parametrize("fails", [False, True])
def test_a_custom_job_runs_its_container_command_locally(
    api: dict[str, Any],
    vertex: FakeVertex,
    gcs_emulator: str,
    gcs_client: storage.Client,
    gcs_bucket: str,
    fails: bool,
) -> None:
    vertex.script_custom_job(run_command=True)
    vertex.command_prefix = [sys.executable, "-c", CONTAINER_SCRIPT]
    vertex.command_env = {"STORAGE_EMULATOR_HOST": gcs_emulator}
    args = [f"gs://{gcs_bucket}/weights.txt"] + (["out of memory"] if fails else [])

    created = create_custom_job(api, vertex, args)
    job, states = wait_for_job(api, created.name)

    assert created.state == v1.JobState.JOB_STATE_PENDING
    written = gcs_client.bucket(gcs_bucket).blob("weights.txt").download_as_bytes()
    assert written == b"hello gs://out/job-1/model/"
    if fails:
        assert job.state == v1.JobState.JOB_STATE_FAILED
        assert "non-zero status of 1" in job.error.message
        assert "trainer: out of memory" in job.error.message
    else:
        assert job.state == v1.JobState.JOB_STATE_SUCCEEDED
        assert set(states[:-1]) <= {"JOB_STATE_RUNNING"}


def test_a_scripted_custom_job_and_its_cancellation(
    api: dict[str, Any], vertex: FakeVertex
) -> None:
    vertex.script_custom_job(["PENDING", "RUNNING"])
    name = create_custom_job(api, vertex, ["train-job"]).name
    states = [api["jobs"].get_custom_job(name=name).state.name for _ in range(3)]

    api["jobs"].cancel_custom_job(name=name)
    cancelled = api["jobs"].get_custom_job(name=name)

    assert states == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_RUNNING"]
    assert cancelled.state == v1.JobState.JOB_STATE_CANCELLED
    assert cancelled.error.code == 1
    with pytest.raises(exceptions.BadRequest):
        api["jobs"].cancel_custom_job(name=name)


def test_the_grpc_transport_over_tls(
    vertex_grpc: FakeVertex, gcs_client: storage.Client, gcs_bucket: str
) -> None:
    api = clients(vertex_grpc, transport="grpc")
    dataset = imported_dataset(api, vertex_grpc, gcs_client, gcs_bucket)
    vertex_grpc.script_pipeline(["RUNNING", "SUCCEEDED"])

    name = create_pipeline(api, vertex_grpc, dataset).name
    vertex_grpc.fail_next(method="GetTrainingPipeline", code=503)
    with pytest.raises(exceptions.ServiceUnavailable):
        api["pipelines"].get_training_pipeline(name=name)
    states = [api["pipelines"].get_training_pipeline(name=name).state.name for _ in range(2)]
    with pytest.raises(exceptions.FailedPrecondition):
        api["pipelines"].cancel_training_pipeline(name=name)

    assert states == ["PIPELINE_STATE_RUNNING", "PIPELINE_STATE_SUCCEEDED"]
    assert api["datasets"].get_dataset(name=dataset).data_item_count == 2
    assert [m for m, _, _ in vertex_grpc.requests][:2] == ["CreateDataset", "GetOperation"]
    # The certificate names 127.0.0.1 too.
    by_address = v1.DatasetServiceClient(
        client_options={"api_endpoint": vertex_grpc.endpoint.replace("localhost", "127.0.0.1")},
        credentials=AnonymousCredentials(),
    )
    assert by_address.get_dataset(name=dataset).name == dataset


def test_the_high_level_sdk_reads_a_model(
    api: dict[str, Any],
    vertex: FakeVertex,
    gcs_client: storage.Client,
    gcs_bucket: str,
) -> None:
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    dataset = imported_dataset(api, vertex, gcs_client, gcs_bucket)
    vertex.script_pipeline(["SUCCEEDED"])
    name = create_pipeline(api, vertex, dataset).name
    model_name = api["pipelines"].get_training_pipeline(name=name).model_to_upload.name

    # aiplatform.init changes process-wide settings (aiplatform.init is bound to the one
    # global config object): restored after the test.
    saved = dict(vars(initializer.global_config))
    try:
        aiplatform.init(
            project=vertex.project,
            location=vertex.location,
            api_endpoint=vertex.endpoint,
            api_transport="rest",
            credentials=AnonymousCredentials(),
        )
        model = aiplatform.Model(model_name)
    finally:
        vars(initializer.global_config).clear()
        vars(initializer.global_config).update(saved)

    assert model.display_name == "model-1"
    assert ("GetModel", model_name, {"name": model_name}) in vertex.requests

"""The vertex-automl backend: Vertex AI AutoML trains the detector; we register its TFLite export.

The remote work is a chain of steps, each started once and named on the job row
(``run.remote``) as soon as it exists, so a step that is retried, or polled twice, reuses it:

1. ``submit`` (a worker): the images in the staging bucket (or in place, when the blob store
   is itself Cloud Storage), the import CSV, then CreateDataset (``createDatasetOperation``).
2. ``poll`` (the poller), one remote call or two each time, never waiting:
   dataset created (``datasetName``) → ImportData (``importOperation``) → import done →
   CreateTrainingPipeline (``pipelineName``) → the pipeline's PIPELINE_STATE_* → SUCCEEDED:
   the uploaded model (``modelName``) → ExportModel as ``tflite`` (``exportOperation``) →
   export done (``exportUri``) → SUCCEEDED.
   Exporting is part of the poll, not of ``collect``: it is a Vertex operation that takes
   minutes on real models, and no worker may wait on one holding its slot.
3. ``collect`` (a worker): read the .tflite file and the model evaluation.
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import json_format, struct_pb2

from app.config import Settings
from app.training.backends.base import Collected, RemoteRun, RemoteState, RemoteStatus
from app.training.backends.vertex_clients import (
    VertexClients,
    list_gs,
    read_gs,
    staging_uri,
    vertex_clients,
    write_gs,
)

log = logging.getLogger(__name__)

IMAGE_DATASET_SCHEMA = "gs://google-cloud-aiplatform/schema/dataset/metadata/image_1.0.0.yaml"
BOUNDING_BOX_IMPORT_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/dataset/ioformat/image_bounding_box_io_format_1.0.0.yaml"
)
OBJECT_DETECTION_DEFINITION = (
    "gs://google-cloud-aiplatform/schema/trainingjob/definition/"
    "automl_image_object_detection_1.0.0.yaml"
)
ML_USE_LABEL = "aiplatform.googleapis.com/ml_use"
# Our splits as Vertex's ml_use values (the import CSV's first column and the split filters).
ML_USE = {"TRAIN": "training", "VALIDATION": "validation", "TEST": "test"}
EXPORT_FORMAT = "tflite"
STOP_REASONS = ("BUDGET_REACHED", "MODEL_CONVERGED")

# Pipeline states (PipelineState names) as the training job's words.
PIPELINE_STATES = {
    "PIPELINE_STATE_SUCCEEDED": RemoteState.SUCCEEDED,
    "PIPELINE_STATE_FAILED": RemoteState.FAILED,
    "PIPELINE_STATE_CANCELLED": RemoteState.CANCELLED,
    # PENDING, QUEUED, RUNNING, PAUSED, CANCELLING and UNSPECIFIED: not over yet.
}


def import_csv(snapshot: dict[str, Any], image_uri: dict[str, str]) -> bytes:
    """The AutoML bounding-box CSV of the snapshot (DESIGN.md §3.1): one row per box,
    ``ml_use,gs://image,label,x_min,y_min,,,x_max,y_max,,``, coordinates relative."""
    labels = snapshot["labels"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for image in snapshot["images"]:
        ml_use, uri = ML_USE[image["split"]], image_uri[image["blobKey"]]
        if not image["boxes"]:
            writer.writerow([ml_use, uri])  # a negative example
        for label, x_min, y_min, x_max, y_max in image["boxes"]:
            # Two vertices (top-left, bottom-right), the other two left empty.
            top_left, bottom_right = [_num(x_min), _num(y_min)], [_num(x_max), _num(y_max)]
            writer.writerow([ml_use, uri, labels[label], *top_left, "", "", *bottom_right, "", ""])
    return out.getvalue().encode()


def _num(value: float) -> str:
    return format(float(value), ".6g")


def _plain(message: Any, field: str) -> Any:
    """A google.protobuf.Value field of a proto-plus message as plain Python (dicts, lists,
    numbers as floats); None when unset."""
    pb = type(message).pb(message)
    if not pb.HasField(field):
        return None
    return json_format.MessageToDict(getattr(pb, field))


def _operation_error(operation: operations_pb2.Operation) -> dict[str, Any]:
    return {"code": operation.error.code or 2, "message": operation.error.message}


def map_evaluation(metrics: dict[str, Any]) -> dict[str, Any]:
    """Vertex's image object-detection metrics as our §3.3 ``metrics`` (the same shape:
    numbers arrive as Struct floats, counts become ints again)."""
    return {
        "boundingBoxMeanAveragePrecision": float(metrics.get("boundingBoxMeanAveragePrecision", 0)),
        "evaluatedBoundingBoxCount": int(metrics.get("evaluatedBoundingBoxCount", 0)),
        "boundingBoxMetrics": [
            {
                "iouThreshold": float(entry.get("iouThreshold", 0)),
                "meanAveragePrecision": float(entry.get("meanAveragePrecision", 0)),
                "confidenceMetrics": [
                    {
                        "confidenceThreshold": float(point.get("confidenceThreshold", 0)),
                        "recall": float(point.get("recall", 0)),
                        "precision": float(point.get("precision", 0)),
                        "f1Score": float(point.get("f1Score", 0)),
                    }
                    for point in entry.get("confidenceMetrics", [])
                ],
            }
            for entry in metrics.get("boundingBoxMetrics", [])
        ],
    }


class VertexAutomlBackend:
    name = "vertex-automl"

    def __init__(self, settings: Settings, clients: VertexClients | None = None) -> None:
        self.settings = settings
        self.clients = clients or vertex_clients(settings)

    # -- submit ----------------------------------------------------------------------------

    def submit(self, run: RemoteRun) -> None:
        """Stage the images and the import CSV, then ask for the dataset; the poller does
        the rest."""
        if "importFile" not in run.remote:
            run.save_remote(importFile=self._stage(run))
        if "createDatasetOperation" not in run.remote and "datasetName" not in run.remote:
            operation = self.clients.dataset.create_dataset(
                parent=self.clients.parent,
                dataset=aiplatform_v1.Dataset(
                    display_name=f"{run.display_name[:100]} ({run.training_job_id})",
                    metadata_schema_uri=IMAGE_DATASET_SCHEMA,
                    labels={"edge-automl-training-job": run.training_job_id.lower()[:63]},
                ),
            )
            run.save_remote(createDatasetOperation=operation.operation.name)

    def _stage(self, run: RemoteRun) -> str:
        """Every image as a gs:// URI, then the import CSV; the CSV's URI."""
        snapshot = run.snapshot()
        storage = self.clients.storage
        uris: dict[str, str] = {}
        missing: list[str] = []
        for image in snapshot["images"]:
            key = image["blobKey"]
            in_place = run.blobs.uri(key)
            if in_place.startswith("gs://"):
                uris[key] = in_place  # the blob store is Cloud Storage: Vertex reads it there
            else:
                uris[key] = staging_uri(self.settings, run.training_job_id, "images", key)
                missing.append(key)
        if missing:
            # One listing instead of a check per image: a retried submit copies only the rest.
            folder = staging_uri(self.settings, run.training_job_id, "images") + "/"
            present = set(list_gs(storage, folder))
            for key in missing:
                if uris[key] not in present:
                    write_gs(storage, uris[key], run.blobs.get(key))
                    run.checkpoint()
        uri = staging_uri(self.settings, run.training_job_id, "import.csv")
        write_gs(storage, uri, import_csv(snapshot, uris), content_type="text/csv")
        log.info(
            "training.vertex.staged",
            extra={
                "training_job_id": run.training_job_id,
                "images": len(uris),
                "copied": len(missing),
            },
        )
        return uri

    # -- poll ------------------------------------------------------------------------------

    def poll(self, run: RemoteRun) -> RemoteStatus:
        remote = run.remote
        if "pipelineName" not in remote:
            if remote.get("cancelRequested"):
                return RemoteStatus(state=RemoteState.CANCELLED)  # nothing trains yet
            return self._prepare(run)
        pipeline = self.clients.pipeline.get_training_pipeline(name=remote["pipelineName"])
        state_name = pipeline.state.name
        state = PIPELINE_STATES.get(state_name, RemoteState.RUNNING)
        if state in (RemoteState.FAILED, RemoteState.CANCELLED):
            error = {"code": pipeline.error.code, "message": pipeline.error.message}
            return RemoteStatus(state=state, remote_state=state_name, error=error)
        if state == RemoteState.RUNNING:
            return RemoteStatus(state=state, remote_state=state_name)
        if remote.get("cancelRequested"):
            return RemoteStatus(state=RemoteState.SUCCEEDED, remote_state=state_name)
        return self._export(run, pipeline, state_name)

    def _prepare(self, run: RemoteRun) -> RemoteStatus:
        """The steps before training: dataset, import, pipeline (one at a time)."""
        remote = run.remote
        if "datasetName" not in remote:
            operation = self._operation(self.clients.dataset, remote["createDatasetOperation"])
            if not operation.done:
                return RemoteStatus(state=RemoteState.RUNNING)
            if operation.HasField("error"):
                return RemoteStatus(state=RemoteState.FAILED, error=_operation_error(operation))
            dataset = aiplatform_v1.Dataset.deserialize(operation.response.value)
            run.save_remote(datasetName=dataset.name)
        if "importOperation" not in remote:
            operation_future = self.clients.dataset.import_data(
                name=remote["datasetName"],
                import_configs=[
                    aiplatform_v1.ImportDataConfig(
                        gcs_source=aiplatform_v1.GcsSource(uris=[remote["importFile"]]),
                        import_schema_uri=BOUNDING_BOX_IMPORT_SCHEMA,
                    )
                ],
            )
            run.save_remote(importOperation=operation_future.operation.name)
            return RemoteStatus(state=RemoteState.RUNNING)
        operation = self._operation(self.clients.dataset, remote["importOperation"])
        if not operation.done:
            return RemoteStatus(state=RemoteState.RUNNING)
        if operation.HasField("error"):
            return RemoteStatus(state=RemoteState.FAILED, error=_operation_error(operation))
        pipeline = self.clients.pipeline.create_training_pipeline(
            parent=self.clients.parent, training_pipeline=self._pipeline(run)
        )
        run.save_remote(pipelineName=pipeline.name)
        log.info(
            "training.vertex.pipeline_created",
            extra={"training_job_id": run.training_job_id, "pipeline": pipeline.name},
        )
        return RemoteStatus(state=RemoteState.RUNNING, remote_state=pipeline.state.name)

    def _pipeline(self, run: RemoteRun) -> aiplatform_v1.TrainingPipeline:
        inputs: dict[str, Any] = {
            "modelType": run.model_type,
            "budgetMilliNodeHours": run.budget_milli_node_hours,
            "disableEarlyStopping": run.disable_early_stopping,
        }
        base = run.base_model
        if base is not None and base.get("remoteModelName"):
            # Vertex names the model by its id alone here (…/models/ID → ID).
            inputs["uptrainBaseModelId"] = base["remoteModelName"].split("@")[0].rsplit("/", 1)[1]
        dataset_id = run.remote["datasetName"].rsplit("/", 1)[1]
        return aiplatform_v1.TrainingPipeline(
            display_name=f"{run.display_name[:100]} ({run.training_job_id})",
            training_task_definition=OBJECT_DETECTION_DEFINITION,
            training_task_inputs=json_format.ParseDict(inputs, struct_pb2.Value()),
            input_data_config=aiplatform_v1.InputDataConfig(
                dataset_id=dataset_id,
                # Our frozen splits, carried by each item's ml_use label from the import.
                filter_split=aiplatform_v1.FilterSplit(
                    training_filter=f"labels.{ML_USE_LABEL}=training",
                    validation_filter=f"labels.{ML_USE_LABEL}=validation",
                    test_filter=f"labels.{ML_USE_LABEL}=test",
                ),
            ),
            model_to_upload=aiplatform_v1.Model(display_name=run.display_name[:128]),
        )

    def _export(self, run: RemoteRun, pipeline: Any, state_name: str) -> RemoteStatus:
        """The pipeline succeeded: export the model as TFLite, then report SUCCEEDED."""
        remote = run.remote
        if "modelName" not in remote:
            metadata = _plain(pipeline, "training_task_metadata") or {}
            reason = metadata.get("successfulStopReason")
            run.save_remote(
                modelName=pipeline.model_to_upload.name,
                costMilliNodeHours=metadata.get("costMilliNodeHours"),
                successfulStopReason=reason if reason in STOP_REASONS else None,
            )
        if "exportOperation" not in remote:
            operation_future = self.clients.model.export_model(
                name=remote["modelName"],
                output_config=aiplatform_v1.ExportModelRequest.OutputConfig(
                    export_format_id=EXPORT_FORMAT,
                    artifact_destination=aiplatform_v1.GcsDestination(
                        output_uri_prefix=staging_uri(self.settings, run.training_job_id, "export")
                        + "/"
                    ),
                ),
            )
            run.save_remote(exportOperation=operation_future.operation.name)
            return RemoteStatus(state=RemoteState.RUNNING, remote_state=state_name)
        operation = self._operation(self.clients.model, remote["exportOperation"])
        if not operation.done:
            return RemoteStatus(state=RemoteState.RUNNING, remote_state=state_name)
        if operation.HasField("error"):
            return RemoteStatus(
                state=RemoteState.FAILED,
                remote_state=state_name,
                error=_operation_error(operation),
            )
        metadata = aiplatform_v1.ExportModelOperationMetadata.deserialize(operation.metadata.value)
        run.save_remote(exportUri=metadata.output_info.artifact_output_uri)
        return RemoteStatus(state=RemoteState.SUCCEEDED, remote_state=state_name)

    @staticmethod
    def _operation(client: Any, name: str) -> operations_pb2.Operation:
        found: operations_pb2.Operation = client.get_operation(
            request=operations_pb2.GetOperationRequest(name=name)
        )
        return found

    # -- cancel ----------------------------------------------------------------------------

    def cancel(self, run: RemoteRun) -> None:
        """Cancel the training pipeline; before it exists, the poll stops the chain."""
        name = run.remote.get("pipelineName")
        if name is not None:
            self.clients.pipeline.cancel_training_pipeline(name=name)

    # -- collect ---------------------------------------------------------------------------

    def collect(self, run: RemoteRun) -> Collected:
        """The exported .tflite file and the model's evaluation, mapped to §3.3."""
        storage = self.clients.storage
        folder = run.remote["exportUri"].rstrip("/") + "/"
        files = sorted(uri for uri in list_gs(storage, folder) if uri.endswith(".tflite"))
        if not files:
            raise FileNotFoundError(f"Vertex AI's export left no .tflite file under {folder}")
        data = read_gs(storage, files[0])
        run.checkpoint()
        model_name = run.remote["modelName"]
        evaluation = None
        for found in self.clients.model.list_model_evaluations(parent=model_name):
            metrics = _plain(found, "metrics")
            if metrics:
                evaluation = self._evaluation_document(run, metrics)
                break
        cost = run.remote.get("costMilliNodeHours")
        return Collected(
            tflite=data,
            evaluation=evaluation,
            remote_model_name=model_name,
            cost_milli_node_hours=None if cost is None else round(float(cost)),
            successful_stop_reason=run.remote.get("successfulStopReason"),
            details={"exportUri": files[0], "pipelineName": run.remote.get("pipelineName")},
        )

    @staticmethod
    def _evaluation_document(run: RemoteRun, metrics: dict[str, Any]) -> dict[str, Any]:
        from app.evaluation.service import remote_metrics_document

        test_images = sum(1 for i in run.snapshot()["images"] if i["split"] == "TEST")
        return remote_metrics_document(map_evaluation(metrics), [], image_count=test_images)

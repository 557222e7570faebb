"""The backends' shared parts: error classes, settings, the API's backend field, the import
CSV and the evaluation mapping of vertex-automl."""

from __future__ import annotations

import csv
import io

import pytest
import requests
from google.api_core import exceptions as google_exceptions

from app.config import SettingsError, load_settings
from app.errors import InvalidInput
from app.evaluation.service import remote_metrics_document
from app.training.backends import check_configured
from app.training.backends.base import is_transient, remote_error, rpc_status
from app.training.backends.vertex_automl import import_csv, map_evaluation
from app.training.backends.vertex_clients import is_stand_in, staging_uri
from tests.training.conftest import start_training


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (google_exceptions.ServiceUnavailable("x"), True),
        (google_exceptions.DeadlineExceeded("x"), True),
        (google_exceptions.TooManyRequests("x"), True),
        (google_exceptions.ResourceExhausted("x"), True),
        (google_exceptions.InternalServerError("x"), True),
        (google_exceptions.GatewayTimeout("x"), True),
        (ConnectionError("refused"), True),
        (requests.exceptions.ConnectionError("refused"), True),
        (google_exceptions.NotFound("x"), False),
        (google_exceptions.PermissionDenied("x"), False),
        (google_exceptions.InvalidArgument("x"), False),
        (google_exceptions.FailedPrecondition("x"), False),
        (ValueError("a bug"), False),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(error, transient):
    assert is_transient(error) is transient


def test_a_remote_error_keeps_the_code_and_message_and_says_what_failed():
    status = rpc_status(google_exceptions.NotFound("dataset 7 not found"))
    assert status == {"code": 5, "status": "NOT_FOUND", "message": "dataset 7 not found"}
    refused = remote_error(google_exceptions.PermissionDenied("denied"), doing="vertex submit")
    assert refused.status_code < 500  # the worker fails the job rather than retrying
    assert refused.to_rpc_status() == {
        "code": 7,
        "status": "PERMISSION_DENIED",
        "message": "vertex submit: denied",
    }
    assert remote_error(ConnectionError("down"), doing="x").status_code >= 500


def test_a_remote_default_backend_needs_its_settings():
    with pytest.raises(SettingsError) as raised:
        load_settings(training_backend="vertex-automl")
    assert "EDGE_AUTOML_VERTEX_PROJECT" in str(raised.value)
    assert "EDGE_AUTOML_VERTEX_STAGING_BUCKET" in str(raised.value)
    with pytest.raises(SettingsError, match="EDGE_AUTOML_VERTEX_CUSTOM_IMAGE"):
        load_settings(
            training_backend="vertex-custom", vertex_project="p", vertex_staging_bucket="gs://b"
        )
    with pytest.raises(SettingsError, match="gs://"):
        load_settings(vertex_staging_bucket="s3://b")
    settings = load_settings(
        training_backend="vertex-automl", vertex_project="p", vertex_staging_bucket="gs://b/x/"
    )
    assert staging_uri(settings, "J", "import.csv") == "gs://b/x/edge-automl/J/import.csv"


def test_stand_in_endpoints_are_recognised():
    assert is_stand_in("http://127.0.0.1:8123")
    assert is_stand_in("localhost:8443")
    assert is_stand_in("127.0.0.1:8443")
    assert not is_stand_in("us-central1-aiplatform.googleapis.com")


def test_an_unconfigured_backend_is_refused_naming_the_settings(client, make_dataset, settings):
    with pytest.raises(InvalidInput) as raised:
        check_configured("vertex-automl", settings)
    assert "EDGE_AUTOML_VERTEX_PROJECT" in str(raised.value)
    dataset_id = make_dataset()
    response = client.post(
        "/v1/trainingJobs",
        json={
            "datasetId": dataset_id,
            "displayName": "d",
            "modelType": "MOBILE_TF_LOW_LATENCY_1",
            "backend": "vertex-custom",
        },
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "EDGE_AUTOML_VERTEX_PROJECT" in message
    assert "EDGE_AUTOML_VERTEX_CUSTOM_IMAGE" in message
    assert client.get("/v1/trainingJobs").json()["trainingJobs"] == []
    local = start_training(client, dataset_id)
    assert (local["backend"], local["remoteState"], local["lastPollError"]) == (
        "local",
        None,
        None,
    )


def test_the_import_csv_carries_splits_labels_and_relative_boxes():
    snapshot = {
        "labels": ["cat", "dog"],
        "images": [
            {"blobKey": "a", "split": "TRAIN", "boxes": [[1, 0.1, 0.2, 0.5, 0.75]]},
            {"blobKey": "b", "split": "TEST", "boxes": []},
            {
                "blobKey": "c",
                "split": "VALIDATION",
                "boxes": [[0, 0, 0, 1, 1], [1, 0.5, 0.5, 1, 1]],
            },
        ],
    }
    uris = {key: f"gs://bucket/{key}.jpg" for key in "abc"}
    rows = list(csv.reader(io.StringIO(import_csv(snapshot, uris).decode())))
    assert rows == [
        ["training", "gs://bucket/a.jpg", "dog", "0.1", "0.2", "", "", "0.5", "0.75", "", ""],
        ["test", "gs://bucket/b.jpg"],
        ["validation", "gs://bucket/c.jpg", "cat", "0", "0", "", "", "1", "1", "", ""],
        ["validation", "gs://bucket/c.jpg", "dog", "0.5", "0.5", "", "", "1", "1", "", ""],
    ]


def test_vertex_metrics_map_to_the_evaluation_resource():
    thresholds = [round(0.05 * i, 2) for i in range(1, 20)]
    vertex = {
        "boundingBoxMeanAveragePrecision": 0.5,
        "evaluatedBoundingBoxCount": 12.0,  # a Struct number
        "boundingBoxMetrics": [
            {
                "iouThreshold": iou,
                "meanAveragePrecision": 1 - iou,
                "confidenceMetrics": [
                    {"confidenceThreshold": 0.5, "recall": 0.4, "precision": 0.8, "f1Score": 0.53}
                ],
            }
            for iou in thresholds
        ],
    }
    metrics = map_evaluation(vertex)
    assert metrics["evaluatedBoundingBoxCount"] == 12
    assert isinstance(metrics["evaluatedBoundingBoxCount"], int)
    assert metrics["boundingBoxMetrics"][0]["confidenceMetrics"][0]["f1Score"] == 0.53
    document = remote_metrics_document(metrics, [], image_count=3)
    assert document["cocoMetrics"]["overall"]["AP50"] == pytest.approx(0.5)
    assert document["cocoMetrics"]["overall"]["AP"] == pytest.approx(1 - 0.725)
    assert document["imageCount"] == 3

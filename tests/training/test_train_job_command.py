"""``edge-automl train-job`` run as a separate process, as a Vertex AI custom job runs it: a
tiny generated snapshot read from a local folder or Cloud Storage (the emulator), progress,
checkpoints and the model written back, a run killed mid-way resumed from its checkpoint,
and bad input refused with a clear message."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from app.detector.bundle import load_bundle
from app.kit.blobs import BlobStore, open_blob_store
from app.training.remote_trainer import TrainJobSpec
from app.training.service import SNAPSHOT_FORMAT, snapshot_key
from tests.training.conftest import make_scene

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = ["circle", "square"]
JOB_ID = "job0000000000000000000000000001"
COMMAND_TIMEOUT_S = 240


def write_snapshot(
    store: BlobStore, splits: dict[str, int] | None = None, *, job_id: str = JOB_ID
) -> str:
    """Generated scenes under ``images/`` and a snapshot naming them, as the service writes
    one (app/training/service.py); returns the snapshot's key."""
    images = []
    seed = 0
    for split, count in (splits or {"TRAIN": 6, "VALIDATION": 2, "TEST": 2}).items():
        for _ in range(count):
            data, boxes = make_scene(seed)
            key = f"datasets/ds1/images/{seed}.jpg"
            store.put(key, data, content_type="image/jpeg")
            images.append(
                {
                    "id": f"di{seed}",
                    "imageId": f"im{seed}",
                    "blobKey": key,
                    "width": 96,
                    "height": 72,
                    "split": split,
                    "boxes": [[LABELS.index(label), *coords] for label, *coords in boxes],
                }
            )
            seed += 1
    key = snapshot_key(job_id)
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "trainingJobId": job_id,
        "datasetId": "ds1",
        "createTime": "2026-01-01T00:00:00+00:00",
        "labels": LABELS,
        "baseModel": None,
        "images": images,
    }
    store.put(key, json.dumps(snapshot).encode(), content_type="application/json")
    return key


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AUTOML_")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "app", *args]


def train_job(args: Sequence[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(args),
        cwd=cwd,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def spec(snapshot: str, images: str, output: str, **fields: Any) -> TrainJobSpec:
    return TrainJobSpec(
        snapshot_url=snapshot,
        images_url=images,
        output_url=output,
        model_type=fields.pop("model_type", "MOBILE_TF_LOW_LATENCY_1"),
        budget_milli_node_hours=fields.pop("budget_milli_node_hours", 50),
        **fields,
    )


def epoch_written(output: BlobStore) -> int:
    if not output.exists("progress.json"):
        return 0
    epoch: int = json.loads(output.get("progress.json"))["epoch"]
    return epoch


def check_outputs(output: BlobStore, *, epochs: int) -> dict[str, Any]:
    """The finished run's files agree with each other; returns result.json."""
    result: dict[str, Any] = json.loads(output.get("result.json"))
    model = output.get("model.pt")
    assert result["modelSha256"] == hashlib.sha256(model).hexdigest()
    assert result["modelSizeBytes"] == len(model)
    assert result["epochs"] == epochs and len(result["history"]) == epochs
    assert result["stopReason"] == "MODEL_CONVERGED", "the epoch cap ended it"
    assert result["labels"] == LABELS and result["trainingJobId"] == JOB_ID
    assert 0 < result["elapsedSeconds"] <= 50 * 3.6
    bundle = load_bundle(model)
    assert bundle.labels == tuple(LABELS)
    assert (str(bundle.model_type), bundle.input_size) == ("MOBILE_TF_LOW_LATENCY_1", 320)
    progress = json.loads(output.get("progress.json"))
    assert progress["epoch"] == epochs and progress["fraction"] == 1.0
    assert progress["budgetSeconds"] == 180.0 and "total" in progress["losses"]
    assert not output.exists("checkpoint.pt"), "a finished run keeps no checkpoint"
    assert not output.exists("error.json")
    return result


def test_a_run_killed_after_an_epoch_resumes_from_its_checkpoint(tmp_path):
    store = open_blob_store(f"file://{tmp_path / 'blobs'}")
    key = write_snapshot(store)
    output_dir = tmp_path / "out"
    output = open_blob_store(output_dir.as_uri())
    args = spec(
        str(tmp_path / "blobs" / key),  # a plain path, as someone runs it locally
        str(tmp_path / "blobs"),
        str(output_dir),
        max_epochs=2,
        progress_seconds=0.0,
    ).args()

    # Preempted: killed once the first epoch's progress is out (its checkpoint goes first).
    first = subprocess.Popen(
        command(args), cwd=tmp_path, env=child_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while epoch_written(output) < 1:
            assert first.poll() is None, f"exited early: {first.communicate()[1]}"
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=30)
        assert first.stderr is not None
        first.stderr.close()
    progress = json.loads(output.get("progress.json"))
    assert progress["elapsedSeconds"] > 0 and output.exists("checkpoint.pt")
    assert not output.exists("result.json") and not output.exists("model.pt")

    # Restarted with the same command line: it picks up the checkpoint.
    second = train_job(args, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "trained 2 epochs" in second.stdout
    result = check_outputs(output, epochs=2)
    assert result["resumedAtEpoch"] == 1
    # The earlier attempt's time counts against the budget too.
    assert result["elapsedSeconds"] >= progress["elapsedSeconds"]

    # Run again once done (Vertex restarting a finished worker): nothing changes.
    model_time = output.stat("model.pt").updated
    third = train_job(args, tmp_path)
    assert third.returncode == 0, third.stderr
    assert json.loads(output.get("result.json")) == result
    assert output.stat("model.pt").updated == model_time


def test_a_run_reads_and_writes_cloud_storage(tmp_path, gcs_emulator, gcs_bucket):
    store = open_blob_store(f"gs://{gcs_bucket}/service")
    key = write_snapshot(store, {"TRAIN": 4, "VALIDATION": 2})
    output_url = f"gs://{gcs_bucket}/staging/edge-automl/{JOB_ID}/output"
    args = spec(
        store.uri(key), store.url, output_url, max_epochs=1, disable_early_stopping=True
    ).args()

    done = train_job(args, tmp_path, STORAGE_EMULATOR_HOST=gcs_emulator)

    assert done.returncode == 0, done.stderr
    output = open_blob_store(output_url)
    result = check_outputs(output, epochs=1)
    assert result["resumedAtEpoch"] is None
    assert sorted(info.key for info in output.list()) == [
        "model.pt",
        "progress.json",
        "result.json",
    ]


BAD_INPUT = {
    "missing snapshot path": "the snapshot '{tmp}/nowhere/snapshot.json' cannot be read",
    "missing gs snapshot": "the snapshot 'gs://{bucket}/nowhere/snapshot.json' does not exist",
    "not a snapshot": "is not a training snapshot: its format is 'something-else/1'",
    "images elsewhere": "of the snapshot is not in --images-from",
    "unknown model type": "--model-type: unknown model type 'MOBILE_TF_HUGE_1'",
    "budget out of range": "--budget-milli-node-hours: 5 is out of range",
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_a_message(tmp_path, gcs_emulator, gcs_bucket, case):
    store = open_blob_store(f"gs://{gcs_bucket}/service")
    key = write_snapshot(store, {"TRAIN": 1})
    snapshot, images, fields = store.uri(key), store.url, {}
    if case == "missing snapshot path":
        snapshot = str(tmp_path / "nowhere" / "snapshot.json")
    elif case == "missing gs snapshot":
        snapshot = f"gs://{gcs_bucket}/nowhere/snapshot.json"
    elif case == "not a snapshot":
        store.put("other.json", json.dumps({"format": "something-else/1"}).encode())
        snapshot = store.uri("other.json")
    elif case == "images elsewhere":
        images = f"gs://{gcs_bucket}/elsewhere"
    elif case == "unknown model type":
        fields["model_type"] = "MOBILE_TF_HUGE_1"
    else:
        fields["budget_milli_node_hours"] = 5
    output_url = f"gs://{gcs_bucket}/out"
    args = spec(snapshot, images, output_url, **fields).args()

    done = train_job(args, tmp_path, STORAGE_EMULATOR_HOST=gcs_emulator)

    assert done.returncode == 2, (done.stdout, done.stderr)
    expected = BAD_INPUT[case].format(tmp=tmp_path, bucket=gcs_bucket)
    assert done.stderr.startswith("edge-automl train-job: "), done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    # Left for the service: Vertex AI itself only reports the exit status.
    error = json.loads(open_blob_store(output_url).get("error.json"))
    assert error["status"] == "INVALID_ARGUMENT" and expected in error["message"]
    assert not open_blob_store(output_url).exists("result.json")


def test_a_missing_argument_is_a_usage_error(tmp_path):
    done = train_job(["train-job", "--snapshot", "x.json", "--output", "out"], tmp_path)
    assert done.returncode == 2
    assert "--images-from" in done.stderr and "required" in done.stderr

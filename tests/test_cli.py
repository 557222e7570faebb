"""The ``edge-automl`` command: serve with its supervised worker, worker, db, apikey, settings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.cli import main
from app.jobs import service as jobs_service
from tests.fixtures.server import REPO_ROOT, free_port


def wait_for(predicate, timeout: float = 30, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s")


def worker_pids(log: str) -> list[int]:
    pids = []
    for line in log.splitlines():
        if "serve.worker.started" in line:
            pids.append(json.loads(line)["pid"])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def operation_state(url: str, op_id: str) -> str:
    return httpx.get(f"{url}/v1/operations/{op_id}").json()["metadata"]["state"]


def test_serve_runs_queued_jobs_with_its_worker_and_stops_it(live_server_factory, session_factory):
    server = live_server_factory()
    with session_factory.begin() as session:
        op_id = jobs_service.enqueue(session, kind="noop").id
    wait_for(lambda: operation_state(server.url, op_id) == "SUCCEEDED")
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    [child] = worker_pids(server.log())
    assert server.stop() == 0
    wait_for(lambda: not alive(child), timeout=10)


def test_serve_restarts_a_worker_that_died(live_server_factory, session_factory):
    server = live_server_factory()
    first = wait_for(lambda: worker_pids(server.log()))[0]
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: worker_pids(server.log())[1:])[0]
    assert second != first
    with session_factory.begin() as session:
        op_id = jobs_service.enqueue(session, kind="noop").id
    wait_for(lambda: operation_state(server.url, op_id) == "SUCCEEDED")


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_non_loopback_without_a_key_refuses_to_start(database_url, session_factory):
    env = {"EDGE_AUTOML_DATABASE_URL": database_url}
    refused = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert refused.returncode == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in refused.stderr
    off = run_cli("serve", "--host", "0.0.0.0", env={**env, "EDGE_AUTOML_AUTH": "off"})
    assert off.returncode == 2
    assert "only allowed on a loopback address" in off.stderr


def test_non_loopback_with_a_key_starts_and_requires_it(database_url, session_factory, tmp_path):
    env = {"EDGE_AUTOML_DATABASE_URL": database_url}
    created = run_cli("apikey", "create", "--name", "ops", "--scope", "read", env=env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--no-worker",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "EDGE_AUTOML_BLOB_URL": f"file://{tmp_path}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up)
        assert httpx.get(f"{url}/v1/operations").status_code == 401
        listed = httpx.get(f"{url}/v1/operations", headers={"x-goog-api-key": secret})
        assert listed.status_code == 200
    finally:
        process.terminate()
        process.wait(10)


def test_invalid_settings_stop_start_up_with_a_clear_message():
    result = run_cli("worker", env={"EDGE_AUTOML_PORT": "eighty", "EDGE_AUTOML_AUTH": "maybe"})
    assert result.returncode == 2
    assert "EDGE_AUTOML_PORT" in result.stderr
    assert "EDGE_AUTOML_AUTH" in result.stderr
    stall = run_cli(
        "worker",
        env={
            "EDGE_AUTOML_JOB_HEARTBEAT_SECONDS": "10",
            "EDGE_AUTOML_JOB_STALL_TIMEOUT_SECONDS": "15",
        },
    )
    assert stall.returncode == 2
    assert "job_stall_timeout_seconds must exceed twice" in stall.stderr


def test_db_upgrade_on_a_fresh_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = run_cli("db", "upgrade", env={"EDGE_AUTOML_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert re.search(r"database at revision (\w+) \(head \1\)", result.stdout)


def test_apikey_create_list_revoke(database_url, session_factory, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_AUTOML_DATABASE_URL", database_url)
    assert main(["apikey", "create", "--name", "mobile backend", "--scope", "write"]) == 0
    out = capsys.readouterr().out
    key_id = re.search(r"created key (\w+)", out).group(1)  # type: ignore[union-attr]
    secret = out.strip().splitlines()[-1]
    assert main(["apikey", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "active" in listing and "mobile backend" in listing
    assert secret not in listing
    assert main(["apikey", "revoke", key_id]) == 0
    capsys.readouterr()
    main(["apikey", "list"])
    assert "revoked" in capsys.readouterr().out


def test_apikey_revoke_unknown_id_fails(database_url, session_factory, monkeypatch):
    monkeypatch.setenv("EDGE_AUTOML_DATABASE_URL", database_url)
    with pytest.raises(Exception, match="not found"):
        main(["apikey", "revoke", "nope"])


def test_openapi_check_detects_a_stale_file(tmp_path):
    stale = tmp_path / "openapi.json"
    stale.write_text("{}")
    assert main(["openapi", "--output", str(stale), "--check"]) == 1
    assert main(["openapi", "--output", str(stale)]) == 0
    assert main(["openapi", "--output", str(stale), "--check"]) == 0
    assert Path(stale).read_text().startswith("{")


def test_worker_child_stops_when_serve_is_killed(live_server_factory):
    server = live_server_factory()
    child = wait_for(lambda: worker_pids(server.log()))[0]
    server.stop(signal.SIGKILL)
    wait_for(lambda: not alive(child), timeout=10)

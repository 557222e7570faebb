"""The ``edge-automl`` command: serve, worker, db, openapi, apikey, train-job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from app.config import Settings, SettingsError, load_settings

log = logging.getLogger("app.cli")

OPENAPI_PATH = Path("openapi/openapi.json")
WORKER_RESTART_DELAY_SECONDS = 2.0


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    return load_settings(**overrides)


def _session_factory(settings: Settings):  # type: ignore[no-untyped-def]
    from app.db.session import make_engine, make_session_factory

    return make_session_factory(make_engine(settings.database_url))


# -- serve -------------------------------------------------------------------------------


class WorkerSupervisor:
    """Runs one worker as a child process beside the API, restarts it if it dies, stops it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--parent-pid", str(os.getpid())]
        )
        log.info("serve.worker.started", extra={"pid": process.pid})
        return process

    def _watch(self) -> None:
        while not self.stopping.is_set():
            self.process = self._spawn()
            code = self.process.wait()
            if self.stopping.is_set():
                return
            log.error("serve.worker.exited", extra={"code": code})
            self.stopping.wait(WORKER_RESTART_DELAY_SECONDS)

    def stop(self) -> None:
        self.stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.settings.worker_shutdown_grace_seconds + 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("serve.worker.stopped", extra={"code": process.returncode})


def check_can_bind(settings: Settings) -> None:
    """Refuse a non-loopback address unless API keys protect it."""
    if settings.binds_loopback:
        return
    if settings.auth == "off":
        raise SettingsError(
            f"EDGE_AUTOML_AUTH=off is only allowed on a loopback address, not {settings.host}"
        )
    from app.auth import repository

    with _session_factory(settings)() as session:
        if not repository.any_active(session):
            raise SettingsError(
                f"refusing to serve on {settings.host} without an API key: "
                "create one with 'edge-automl apikey create --name NAME --scope admin'"
            )


def _exit_cleanly(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = _settings(args)
    check_can_bind(settings)
    app = create_app(settings)
    supervisor = None
    if settings.embedded_worker and not args.no_worker:
        supervisor = WorkerSupervisor(settings)
        supervisor.start()
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then restores the previous handlers
    # and re-raises the signal: make that previous handler a clean exit, so the worker
    # child is stopped below instead of orphaned by a process killed mid-finally.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.jobs.registry import default_registry
    from app.jobs.worker import Worker

    settings = _settings(args)
    worker = Worker(
        settings=settings,
        session_factory=_session_factory(settings),
        registry=default_registry(),
        parent_pid=args.parent_pid,
    )
    worker.install_signal_handlers()
    worker.run()
    return 0


# -- db ----------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from app.db import migrate
    from app.db.session import make_engine

    settings = _settings(args)
    if args.action == "upgrade":
        migrate.upgrade(settings.database_url, args.revision)
    elif args.action == "downgrade":
        migrate.downgrade(settings.database_url, args.revision)
    engine = make_engine(settings.database_url)
    current = migrate.current_revision(engine)
    engine.dispose()
    head = migrate.head_revision(settings.database_url)
    sys.stdout.write(f"database at revision {current} (head {head})\n")
    return 0


# -- openapi -----------------------------------------------------------------------------


def openapi_document() -> str:
    """The app's OpenAPI document, built without touching any real database or folder."""
    import tempfile

    from app.db.session import make_engine
    from app.kit.blobs import open_blob_store
    from app.main import create_app

    settings = load_settings(database_url="sqlite://")
    with tempfile.TemporaryDirectory() as scratch:
        blobs = open_blob_store(f"file://{scratch}")
        app = create_app(settings, engine=make_engine("sqlite://"), blobs=blobs)
        return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def cmd_openapi(args: argparse.Namespace) -> int:
    document = openapi_document()
    path = Path(args.output)
    if args.check:
        if not path.exists() or path.read_text() != document:
            sys.stderr.write(f"{path} is out of date: run 'edge-automl openapi'\n")
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)
    sys.stdout.write(f"wrote {path}\n")
    return 0


# -- apikey ------------------------------------------------------------------------------


def cmd_apikey(args: argparse.Namespace) -> int:
    from app.auth import repository, service

    settings = _settings(args)
    with _session_factory(settings).begin() as session:
        if args.action == "create":
            key, secret = service.create(session, display_name=args.name, scopes=args.scope)
            sys.stdout.write(
                f"created key {key.id} ({key.display_name}, scopes {','.join(key.scopes)})\n"
            )
            sys.stdout.write(f"{secret}\n")
            sys.stderr.write("store the key now: it cannot be shown again\n")
        elif args.action == "list":
            for key in repository.list_all(session):
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                used = f"{key.last_used_at:%Y-%m-%dT%H:%M}Z" if key.last_used_at else "never"
                sys.stdout.write(
                    f"{key.id}  {key.key_prefix}…  {','.join(key.scopes):<16} {state:<18} "
                    f"last used {used}  {key.display_name}\n"
                )
        else:
            key = service.revoke(session, key_id=args.id)
            sys.stdout.write(f"revoked key {key.id} ({key.display_name})\n")
    return 0


# -- train-job ---------------------------------------------------------------------------


def cmd_train_job(args: argparse.Namespace) -> int:
    from app.training import remote_trainer

    spec = remote_trainer.TrainJobSpec(
        snapshot_url=args.snapshot,
        images_url=args.images_from,
        output_url=args.output,
        model_type=args.model_type,
        budget_milli_node_hours=args.budget_milli_node_hours,
        disable_early_stopping=args.disable_early_stopping,
        seed=args.seed,
        max_epochs=args.max_epochs,
        threads=args.threads,
        progress_seconds=args.progress_seconds,
    )
    try:
        result = remote_trainer.run(spec)
    except remote_trainer.JobInputError as exc:
        remote_trainer.record_refusal(spec, str(exc))
        sys.stderr.write(f"edge-automl train-job: {exc}\n")
        return 2
    sys.stdout.write(
        f"trained {result['epochs']} epochs ({result['stopReason']}); "
        f"wrote {args.output.rstrip('/')}/{remote_trainer.MODEL_FILE}\n"
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_train_job(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from app.training.remote_trainer import DEFAULT_PROGRESS_SECONDS

    job = commands.add_parser(
        "train-job",
        help="train on a dataset snapshot outside the service (a Vertex AI custom job)",
        description="Train a detector on a frozen training snapshot, reading it and its images "
        "through a blob store (gs://bucket/prefix, file:// or a path) and writing progress.json "
        "and checkpoint.pt every epoch, then model.pt and result.json (last) under --output. "
        "An output holding checkpoint.pt resumes from it; one holding result.json is done. "
        "Exits 2 with a message on bad input.",
    )
    job.add_argument(
        "--snapshot",
        required=True,
        help="the snapshot file: gs://bucket/.../snapshot.json or a path",
    )
    job.add_argument(
        "--images-from",
        required=True,
        help="blob store the snapshot's keys (images, base model) resolve in",
    )
    job.add_argument("--output", required=True, help="blob store (prefix) the run writes to")
    job.add_argument(
        "--model-type", required=True, help="MOBILE_TF_LOW_LATENCY_1 etc., or an alias"
    )
    job.add_argument(
        "--budget-milli-node-hours",
        type=int,
        required=True,
        help="1,000 = one hour of this machine's wall clock",
    )
    job.add_argument("--disable-early-stopping", action="store_true")
    job.add_argument("--seed", type=int, default=0)
    job.add_argument("--max-epochs", type=_positive_int, help="cap on epochs (smoke tests)")
    job.add_argument("--threads", type=_positive_int, help="CPU threads for training")
    job.add_argument(
        "--progress-seconds",
        type=float,
        default=DEFAULT_PROGRESS_SECONDS,
        help="most seconds between progress.json writes within an epoch",
    )
    job.set_defaults(handler=cmd_train_job)


# -- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-automl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API (and one supervised worker)")
    serve.add_argument("--host", help="bind address (EDGE_AUTOML_HOST)")
    serve.add_argument("--port", type=int, help="port (EDGE_AUTOML_PORT)")
    serve.add_argument("--no-worker", action="store_true", help="do not start a worker child")
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser("worker", help="run a standalone worker process")
    worker.add_argument(
        "--parent-pid", type=int, help="stop when this process is gone (used by serve)"
    )
    worker.set_defaults(handler=cmd_worker)

    db = commands.add_parser("db", help="database schema (Alembic migrations)")
    db_actions = db.add_subparsers(dest="action", required=True)
    db_actions.add_parser("upgrade").add_argument("revision", nargs="?", default="head")
    db_actions.add_parser("downgrade").add_argument("revision")
    db_actions.add_parser("current")
    db.set_defaults(handler=cmd_db)

    openapi = commands.add_parser("openapi", help="write the OpenAPI document")
    openapi.add_argument("--output", default=str(OPENAPI_PATH))
    openapi.add_argument("--check", action="store_true", help="fail if the file is out of date")
    openapi.set_defaults(handler=cmd_openapi)

    apikey = commands.add_parser("apikey", help="manage API keys")
    key_actions = apikey.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope", action="append", choices=["read", "write", "admin"], required=True
    )
    key_actions.add_parser("list")
    key_actions.add_parser("revoke").add_argument("id")
    apikey.set_defaults(handler=cmd_apikey)

    _add_train_job(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.stderr.write(f"edge-automl: {exc}\n")
        return 2
    from app.kit.logs import configure_logging

    configure_logging(fmt=settings.log_format, level=settings.log_level)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        sys.stderr.write(f"edge-automl: {exc}\n")
        return 2

"""Benchmark of a dataset import at scale on PostgreSQL: rows per second and peak worker RSS.

    .venv/bin/python bench/import_scale.py [--database-url URL] [--images N]
        [--boxes-per-image 1,10] [--source local|gcs]

It writes N small distinct JPEGs (32x32) where an import can read them: a local import root
(``--source local``, the default) or a bucket of a GCS emulator (``--source gcs``, slow per
request, so report it apart). For each boxes-per-image value k it writes an AutoML CSV of
N*k rows (k unique boxes on every image, a few labels, ML_USE mixed and missing) and imports
it as production does: a dataset and the import are queued through the service layer in a
fresh scratch database, and one fresh ``python -m app worker`` process runs it with a fresh
blob folder, so every run starts from an empty store and the peak RSS is that run's own.
Exits 1 when an import did not bring exactly its rows and images, 2 when a run failed.
"""

# ruff: noqa: E402 - the sys.path fix below must run before anything imports ``queue``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/queue.py would then shadow
# the standard library's ``queue`` module, which alembic and psycopg import.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse
import hashlib
import io
import os
import platform
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from app.datasets import service as datasets_service
from app.datasets.schemas import DatasetCreate, ImportUris
from app.db.job import JobState
from app.db.session import make_engine, make_session_factory
from app.jobs import service as jobs_service
from app.jobs.schemas import OperationRead
from bench.queue import BenchError, scratch_database, stop_workers, wait_for_listeners

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPO_ROOT = _HERE.parent
RUN_TIMEOUT_SECONDS = 600.0
JOB_POLL_SECONDS = 0.1
IMAGE_SIDE = 32
LABELS = ("bird", "cat", "dog", "car", "person")
# Per image: an explicit ML_USE (stated on some of its rows, omitted on the others) or none.
SPLITS = ("TRAIN",) * 5 + ("VALIDATION", "TEST") + (None,) * 3
STATED_SHARE = 0.7
GOAL_ROWS_PER_S = 5000.0
GOAL_PEAK_RSS_MB = 400.0
EMULATOR = Path(sys.executable).parent / "gcp-storage-emulator"
EMULATOR_STARTUP_SECONDS = 30.0
BUCKET = "import-scale"
# The emulator's uploads slow down with every object it holds (1,000 images take ~9 s to
# upload, 3,000 ~75 s), so the gcs variant runs on fewer images.
DEFAULT_IMAGES = {"local": 10_000, "gcs": 2_000}


@dataclass(frozen=True)
class Source:
    """Where the index files and images sit, and what a worker needs to read them."""

    name: str
    image_uris: list[str]
    image_bytes: int
    import_root: Path
    env: dict[str, str]
    # Puts a generated index file where the importer reads it; returns its URI.
    place_index: Callable[[Path], str]


@dataclass
class RunResult:
    rows: int
    images: int
    source: str
    start_s: float  # spawning the worker until it listens for jobs
    job_s: float  # finished_at - started_at of the job row
    wall_s: float  # spawning the worker until the bench sees the job SUCCEEDED
    idle_rss_mb: float  # the worker's VmHWM once started, before it has a job
    peak_rss_mb: float  # its VmHWM after the import
    rss_by_quarter_mb: list[float | None]
    response: dict[str, Any]
    dataset_images: int
    dataset_boxes: int
    problems: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.job_s

    @property
    def wall_rows_per_s(self) -> float:
        return self.rows / self.wall_s


# -- generated data ----------------------------------------------------------------------


def make_images(count: int, *, seed: int) -> Iterator[bytes]:
    """``count`` distinct small JPEGs: a 4x4 grid of dark and light cells spells the index."""
    if count > 1 << 16:
        raise BenchError("at most 65,536 distinct images (16 cells of one bit each)")
    rng = random.Random(seed)
    cell = IMAGE_SIDE // 4
    for index in range(count):
        tint = bytes(rng.randrange(64) for _ in range(3))
        rows = []
        for cell_row in range(4):
            line = b"".join(
                (bytes((192 + tint[0], 192 + tint[1], 192 + tint[2])) if index >> bit & 1 else tint)
                * cell
                for bit in range(cell_row * 4, cell_row * 4 + 4)
            )
            rows.append(line * cell)
        image = Image.frombytes("RGB", (IMAGE_SIDE, IMAGE_SIDE), b"".join(rows))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        yield out.getvalue()


def write_images(folder: Path, count: int, *, seed: int) -> tuple[list[Path], int]:
    """Write the images under ``folder``; (their paths, total bytes). Refuses duplicates."""
    paths, hashes, total = [], set(), 0
    for index, data in enumerate(make_images(count, seed=seed)):
        path = folder / f"{index // 1000:03d}" / f"img{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hashes.add(hashlib.sha256(data).hexdigest())
        paths.append(path)
        total += len(data)
    if len(hashes) != count:
        raise BenchError(f"generated {count - len(hashes)} duplicate images")
    return paths, total


def csv_lines(image_uris: Sequence[str], *, boxes_per_image: int, seed: int) -> Iterator[str]:
    """AutoML CSV rows, ``boxes_per_image`` unique boxes per image, in shuffled order."""
    rng = random.Random(seed)
    rows: list[tuple[str, str, str, tuple[float, float, float, float]]] = []
    for uri in image_uris:
        split = rng.choice(SPLITS)
        boxes: set[tuple[str, tuple[float, float, float, float]]] = set()
        while len(boxes) < boxes_per_image:
            x1, x2 = sorted(round(rng.uniform(0.0, 1.0), 4) for _ in range(2))
            y1, y2 = sorted(round(rng.uniform(0.0, 1.0), 4) for _ in range(2))
            if x2 - x1 >= 0.01 and y2 - y1 >= 0.01:
                boxes.add((rng.choice(LABELS), (x1, y1, x2, y2)))
        for label, box in sorted(boxes):
            stated = split if split is not None and rng.random() < STATED_SHARE else None
            rows.append((stated or "", uri, label, box))
    rng.shuffle(rows)
    for split, uri, label, (x1, y1, x2, y2) in rows:
        # Without ML_USE the row has ten columns, as AutoML allows; else the full eleven.
        head = f"{split}," if split or rng.random() < 0.5 else ""
        yield f"{head}{uri},{label},{x1},{y1},,,{x2},{y2},,\n"


def write_csv(
    path: Path, image_uris: Sequence[str], *, boxes_per_image: int, seed: int
) -> tuple[int, int]:
    """Write the CSV; (rows, bytes)."""
    rows = 0
    with path.open("w", newline="") as out:
        for line in csv_lines(image_uris, boxes_per_image=boxes_per_image, seed=seed):
            out.write(line)
            rows += 1
    return rows, path.stat().st_size


# -- sources -----------------------------------------------------------------------------


def local_source(work: Path, *, images: int, seed: int) -> Source:
    root = work / "import-root"
    paths, size = write_images(root / "images", images, seed=seed)

    def place_index(local: Path) -> str:
        return str(local)  # already inside the import root

    return Source(
        name="local",
        image_uris=[str(path) for path in paths],
        image_bytes=size,
        import_root=root,
        env={},
        place_index=place_index,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def gcs_emulator(work: Path) -> Iterator[str]:
    """A GCS emulator process (as tests/fixtures/gcs.py starts it); yields its base URL."""
    if not EMULATOR.exists():
        raise BenchError(f"the GCS emulator is not installed ({EMULATOR} is missing)")
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = work / "emulator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(EMULATOR), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + EMULATOR_STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise BenchError(f"the GCS emulator exited:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{base_url}/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("the GCS emulator did not start") from None
                time.sleep(0.05)
        yield base_url
    finally:
        process.kill()
        process.wait()


def gcs_source(work: Path, base_url: str, *, images: int, seed: int) -> Source:
    # Imported here: the Google libraries load only for this variant, as in app.kit.blobs.
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = base_url  # for the client below only
    client = storage.Client(credentials=AnonymousCredentials(), project="bench")
    bucket = client.create_bucket(BUCKET)
    uris, size = [], 0
    for index, data in enumerate(make_images(images, seed=seed)):
        key = f"images/{index // 1000:03d}/img{index:05d}.jpg"
        bucket.blob(key).upload_from_string(data, content_type="image/jpeg")
        uris.append(f"gs://{BUCKET}/{key}")
        size += len(data)

    def place_index(local: Path) -> str:
        key = f"index/{local.name}"
        bucket.blob(key).upload_from_filename(str(local), content_type="text/csv")
        return f"gs://{BUCKET}/{key}"

    return Source(
        name="gcs-emulator",
        image_uris=uris,
        image_bytes=size,
        import_root=work / "import-root",
        env={"STORAGE_EMULATOR_HOST": base_url},
        place_index=place_index,
    )


# -- one run -----------------------------------------------------------------------------


def proc_status_kb(pid: int, field_name: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM) in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field_name}")


def start_worker(url: str, *, blob_folder: Path, source: Source) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **source.env,
        "EDGE_AUTOML_DATABASE_URL": url,
        "EDGE_AUTOML_BLOB_URL": blob_folder.as_uri(),
        "EDGE_AUTOML_IMPORT_ROOT": str(source.import_root),
        "EDGE_AUTOML_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app", "worker"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def enqueue_import(url: str, uri: str) -> tuple[str, str]:
    """A new dataset and its queued import, as the API would make them; (dataset, job) ids."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine).begin() as session:
            dataset = datasets_service.create(
                session, dataset_in=DatasetCreate(display_name="import-scale")
            )
            job_id = datasets_service.start_import_uris(
                session, dataset_id=dataset.id, request=ImportUris(uris=[uri])
            )
            return dataset.id, job_id
    finally:
        engine.dispose()


def wait_for_job(
    engine: Engine, worker: subprocess.Popen[bytes], job_id: str
) -> tuple[OperationRead, list[tuple[int, int]]]:
    """Poll until the job ends; the operation and (rows read, worker VmRSS kB) samples."""
    factory = make_session_factory(engine)
    samples: list[tuple[int, int]] = []
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        with factory() as session:
            operation = OperationRead.from_job(jobs_service.get(session, job_id=job_id))
        if worker.poll() is not None:
            raise BenchError(f"the worker exited with {worker.returncode} during the import")
        rows_read = int(operation.metadata.progress_details.get("rowsRead", 0))
        samples.append((rows_read, proc_status_kb(worker.pid, "VmRSS")))
        if operation.done:
            return operation, samples
        if time.monotonic() > deadline:
            raise BenchError(f"the import did not finish in {RUN_TIMEOUT_SECONDS:.0f}s")
        time.sleep(JOB_POLL_SECONDS)


def rss_by_quarter(samples: Sequence[tuple[int, int]], rows: int) -> list[float | None]:
    """The largest RSS sampled (MB) while each quarter of the rows was being read.

    Progress is reported once per staged batch, so a short run may leave a quarter unsampled.
    """
    quarters: list[int | None] = [None] * 4
    for rows_read, rss_kb in samples:
        quarter = min(3, max(0, (rows_read - 1) * 4 // rows))
        quarters[quarter] = max(quarters[quarter] or 0, rss_kb)
    return [None if kb is None else kb / 1024 for kb in quarters]


def check(result: RunResult) -> list[str]:
    """Every way the import differs from the file: it holds unique boxes, one per row."""
    expected = {
        "rowsRead": result.rows,
        "errorCount": 0,
        "importedBoxCount": result.rows,
        "importedImageCount": result.images,
        "newImageCount": result.images,
    }
    problems = [
        f"response {key}={result.response.get(key)} expected {value}"
        for key, value in expected.items()
        if result.response.get(key) != value
    ]
    if result.dataset_boxes != result.rows:
        problems.append(f"dataset boxCount={result.dataset_boxes} expected {result.rows}")
    if result.dataset_images != result.images:
        problems.append(f"dataset imageCount={result.dataset_images} expected {result.images}")
    return problems


def import_once(
    server_url: str, work: Path, source: Source, *, csv_path: Path, rows: int
) -> RunResult:
    """One import of ``csv_path`` in a fresh database, blob folder and worker process."""
    index_uri = source.place_index(csv_path)
    blob_folder = work / f"blobs-{rows}"
    with scratch_database(server_url) as url:
        engine = make_engine(url)
        database = make_url(url).database or ""
        try:
            spawned = time.monotonic()
            worker = start_worker(url, blob_folder=blob_folder, source=source)
            try:
                wait_for_listeners(engine, [worker], database=database)
                start_s = time.monotonic() - spawned
                idle_kb = proc_status_kb(worker.pid, "VmHWM")
                dataset_id, job_id = enqueue_import(url, index_uri)
                operation, samples = wait_for_job(engine, worker, job_id)
                wall_s = time.monotonic() - spawned
                # Read before stopping: the worker is idle again, and its high-water mark is
                # the import's peak (one fresh process per run, so no earlier run is in it).
                # The kernel refreshes VmHWM lazily, so a sampled VmRSS can be above it.
                peak_kb = max(proc_status_kb(worker.pid, "VmHWM"), *(kb for _, kb in samples))
                stop_workers([worker])
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            if operation.metadata.state != JobState.SUCCEEDED:
                raise BenchError(f"the import ended {operation.metadata.state}: {operation.error}")
            started, finished = operation.metadata.start_time, operation.metadata.end_time
            if started is None or finished is None:
                raise BenchError("the finished job carries no started_at/finished_at")
            with make_session_factory(engine)() as session:
                dataset = datasets_service.get(session, dataset_id=dataset_id)
                counts = datasets_service.counts(session, [dataset])[dataset_id]
        finally:
            engine.dispose()
    result = RunResult(
        rows=rows,
        images=len(source.image_uris),
        source=source.name,
        start_s=start_s,
        job_s=(finished - started).total_seconds(),
        wall_s=wall_s,
        idle_rss_mb=idle_kb / 1024,
        peak_rss_mb=peak_kb / 1024,
        rss_by_quarter_mb=rss_by_quarter(samples, rows),
        response=operation.response or {},
        dataset_images=counts.image_count,
        dataset_boxes=counts.box_count,
    )
    result.problems = check(result)
    return result


# -- report ------------------------------------------------------------------------------


def short(count: int) -> str:
    """10000 -> 10k, 100000 -> 100k, 1500 -> 1500."""
    if count >= 1000 and count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


def machine_line(server_url: str) -> str:
    engine = make_engine(server_url)
    try:
        with engine.connect() as connection:
            server = connection.execute(text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"import_scale.machine cores={os.cpu_count()} usable_cores={usable} "
        f"python={platform.python_version()} postgres={server.split()[0]}"
    )


def run_line(result: RunResult) -> str:
    return (
        f"import_scale.run rows={result.rows} images={result.images} source={result.source} "
        f"job_s={result.job_s:.2f} rows_per_s={result.rows_per_s:.0f} "
        f"wall_s={result.wall_s:.2f} wall_rows_per_s={result.wall_rows_per_s:.0f} "
        f"worker_start_s={result.start_s:.2f} peak_rss_mb={result.peak_rss_mb:.1f} "
        f"idle_rss_mb={result.idle_rss_mb:.1f} "
        f"boxes={result.dataset_boxes} errors={result.response.get('errorCount')} "
        f"check={'ok' if not result.problems else 'FAILED'}"
    )


def rss_line(result: RunResult) -> str:
    quarters = " ".join(
        f"q{i + 1}={'-' if mb is None else f'{mb:.1f}'}"
        for i, mb in enumerate(result.rss_by_quarter_mb)
    )
    return f"import_scale.rss_mb rows={result.rows} {quarters} (max VmRSS sampled per quarter)"


def ratio_line(small: RunResult, large: RunResult) -> str:
    name = f"{short(large.rows)}_vs_{short(small.rows)}"
    return (
        f"import_scale.ratio rss_{name}={large.peak_rss_mb / small.peak_rss_mb:.2f} "
        f"rows_per_s_{name}={large.rows_per_s / small.rows_per_s:.2f} "
        f"job_s_{name}={large.job_s / small.job_s:.2f} rows_{name}={large.rows / small.rows:.0f}"
    )


def cost_line(small: RunResult, large: RunResult) -> str | None:
    """Split job time into a per-image and a per-row part: job_s = images*a + rows*b."""
    if large.rows == small.rows or large.images != small.images:
        return None
    per_row = (large.job_s - small.job_s) / (large.rows - small.rows)
    per_image = (small.job_s - small.rows * per_row) / small.images
    return (
        f"import_scale.cost per_image_ms={per_image * 1000:.3f} per_row_ms={per_row * 1000:.4f} "
        f"(job_s = images*per_image + rows*per_row, fitted to the {short(small.rows)} and "
        f"{short(large.rows)} runs)"
    )


def goal_line(results: Sequence[RunResult]) -> str:
    # The speed goal is for the big file (100,000 rows over 10,000 images); the small one,
    # one row per image, is bound by the per-image cost and shows that memory stays flat.
    biggest = max(results, key=lambda r: r.rows)
    largest = max(r.peak_rss_mb for r in results)
    speed = "PASS" if biggest.rows_per_s >= GOAL_ROWS_PER_S else "FAIL"
    memory = "PASS" if largest < GOAL_PEAK_RSS_MB else "FAIL"
    return (
        f"import_scale.goal rows_per_s>={GOAL_ROWS_PER_S:.0f} at rows={biggest.rows}: {speed} "
        f"({biggest.rows_per_s:.0f}) peak_rss<{GOAL_PEAK_RSS_MB:.0f}MB: {memory} "
        f"(largest {largest:.1f})"
    )


LEGEND = (
    "# job_s: finished_at - started_at of the job row (the import alone); "
    "rows_per_s = rows / job_s",
    "# wall_s: spawning the worker until the bench sees the job SUCCEEDED (includes process "
    "start-up and worker_start_s); wall_rows_per_s = rows / wall_s",
    "# peak_rss_mb: the larger of the worker's VmHWM after the import and its VmRSS sampled "
    f"every {JOB_POLL_SECONDS}s, one fresh process per run; idle_rss_mb: its VmHWM once "
    "started, before the job",
    "# every run imports into an empty database and blob folder; the larger CSVs name the "
    "same images, so they fetch and store as many images but stage more rows",
)


# -- entry point -------------------------------------------------------------------------


def boxes_counts(value: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("boxes per image must be positive")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="any database on the PostgreSQL server to use; a scratch one is made per run",
    )
    parser.add_argument(
        "--images",
        type=int,
        help=f"distinct images (default {DEFAULT_IMAGES['local']:,}; "
        f"{DEFAULT_IMAGES['gcs']:,} with --source gcs)",
    )
    parser.add_argument(
        "--boxes-per-image",
        type=boxes_counts,
        default=[1, 10],
        help="one run per value: a CSV of images * value rows",
    )
    parser.add_argument(
        "--source",
        choices=("local", "gcs"),
        default="local",
        help="local: images in a local import root; gcs: in a GCS emulator bucket (slow)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = DEFAULT_IMAGES[args.source]
    if not args.database_url.startswith("postgresql"):
        parser.error("the import bench runs on PostgreSQL")
    if not 1 <= args.images <= 1 << 16:
        parser.error("--images must be between 1 and 65536")
    return args


def run(args: argparse.Namespace, stack: ExitStack) -> int:
    print(machine_line(args.database_url), flush=True)
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="import-scale-")))
    started = time.monotonic()
    if args.source == "gcs":
        base_url = stack.enter_context(gcs_emulator(work))
        source = gcs_source(work, base_url, images=args.images, seed=args.seed)
    else:
        source = local_source(work, images=args.images, seed=args.seed)
    print(
        f"import_scale.images count={args.images} side={IMAGE_SIDE} "
        f"mean_bytes={source.image_bytes / args.images:.0f} source={source.name} "
        f"setup_s={time.monotonic() - started:.2f} work_dir={work}",
        flush=True,
    )
    for line in LEGEND:
        print(line)
    results = []
    for boxes_per_image in args.boxes_per_image:
        csv_path = source.import_root / f"index-{boxes_per_image}.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        rows, size = write_csv(
            csv_path, source.image_uris, boxes_per_image=boxes_per_image, seed=args.seed
        )
        print(
            f"import_scale.csv rows={rows} boxes_per_image={boxes_per_image} bytes={size}",
            flush=True,
        )
        result = import_once(args.database_url, work, source, csv_path=csv_path, rows=rows)
        results.append(result)
        print(run_line(result), flush=True)
        print(rss_line(result), flush=True)
        for problem in result.problems:
            print(f"import_scale.check rows={rows} FAILED {problem}", flush=True)
    if len(results) > 1:
        print(ratio_line(results[0], results[-1]))
        cost = cost_line(results[0], results[-1])
        if cost:
            print(cost)
    print(goal_line(results))
    return 1 if any(result.problems for result in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the worker is stopped and the scratch database dropped.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        with ExitStack() as stack:
            return run(args, stack)
    except BenchError as exc:
        print(f"import_scale.error {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

# One image for every edge-automl process: the API, the worker and the one-shot admin
# commands (`db upgrade`, `apikey ...`). The entrypoint is the `edge-automl` CLI, so the
# first argument picks the process:
#
#   docker run IMAGE                      # API: serve on 0.0.0.0:8080 without a worker child
#   docker run IMAGE worker               # a standalone worker
#   docker run --rm IMAGE db upgrade      # Alembic migrations to head (shipped in the package)
#
# Build arguments:
#   INSTALL_TORCH=true|false   CPU-only torch/torchvision from the PyTorch index (default
#                              true, so the image can run training workers; false gives a
#                              much smaller API-only image).
#   VERSION, VCS_REF, BUILD_DATE, SOURCE_URL   OCI labels.
#
# See deploy/README.md. This file was checked by reading only: Docker cannot run on the
# development machines.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# Builder: a self-contained virtual environment in /opt/venv. The runtime stage copies it
# to the same path, so the scripts' shebangs stay valid.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# PyTorch first: it is the largest layer and changes least often. Training, evaluation and
# export import it. The CPU wheels come from the PyTorch index (PyPI's Linux torch wheels pull
# in CUDA), so the dependency step below finds torch installed; a GPU image for the Vertex AI
# custom job sets TORCH_INDEX_URL to PyPI (deploy/vertex-custom/README.md).
ARG INSTALL_TORCH=true
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN case "$INSTALL_TORCH" in \
      true|1|yes) \
        pip install --index-url "$TORCH_INDEX_URL" \
          "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" ;; \
      false|0|no) \
        echo "INSTALL_TORCH=$INSTALL_TORCH: skipping torch" ;; \
      *) \
        echo "INSTALL_TORCH must be true or false, got '$INSTALL_TORCH'" >&2; exit 1 ;; \
    esac

WORKDIR /src

# Dependencies next, from pyproject.toml alone, so editing the source does not reinstall
# them: install a stub project (empty packages) to pull the dependencies, then drop it.
COPY pyproject.toml README.md ./
RUN mkdir -p app migrations \
    && touch app/__init__.py migrations/__init__.py \
    && pip install . \
    && pip uninstall -y edge-automl \
    && rm -rf app migrations

# The real project, built into a wheel (hatchling) and installed non-editable. The wheel
# holds both packages, `app` and `migrations`, so `edge-automl db upgrade` needs nothing
# from the source tree at run time.
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && pip install /tmp/wheels/edge_automl-*.whl \
    && rm -rf /tmp/wheels \
    && edge-automl --help > /dev/null

# ---------------------------------------------------------------------------------------
# Runtime: slim Python, the venv, a non-root user. No compilers, no curl.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG VCS_REF=""
ARG BUILD_DATE=""
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="edge-automl" \
      org.opencontainers.image.description="Self-hosted AutoML Vision Edge: train, evaluate, export and serve on-device object detectors." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Fixed numeric ids so volumes and Kubernetes `runAsUser` can rely on them.
RUN groupadd --system --gid 10001 edge \
    && useradd --system --uid 10001 --gid edge \
         --home-dir /srv/edge-automl --shell /usr/sbin/nologin edge \
    && mkdir -p /srv/edge-automl/data \
    && chown -R edge:edge /srv/edge-automl

COPY --from=builder /opt/venv /opt/venv

# The embedded defaults (SQLite and blobs under ./data) resolve to /srv/edge-automl/data,
# which is the volume. With Postgres and gs:// nothing important is written there.
WORKDIR /srv/edge-automl
VOLUME ["/srv/edge-automl/data"]

USER 10001:10001
EXPOSE 8080

# Liveness of the API process only (/healthz). Readiness (/readyz) belongs to the load
# balancer or orchestrator. Worker and one-shot containers have no HTTP port: disable this
# check for them (`docker run --no-healthcheck`, or `healthcheck: disable: true` in compose).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# SIGTERM (the default stop signal) reaches the CLI directly: exec form, no shell. The
# worker finishes or releases its current job lease on SIGTERM; give it a stop grace period
# longer than a checkpoint interval. Run with `--init` (compose: `init: true`) so PID 1
# also reaps any child processes.
ENTRYPOINT ["edge-automl"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--no-worker"]

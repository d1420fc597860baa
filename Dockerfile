# syntax=docker/dockerfile:1
# waiqin-poller container image.
#   docker build -t waiqin-poller .
#   docker run --rm -p 8080:8080 -v waiqin-state:/var/lib/waiqin-poller \
#     -e WAIQIN_OPENID=... -e WAIQIN_APPKEY=... -e KAFKA_BOOTSTRAP_SERVERS=... waiqin-poller
# The same image runs every subcommand: `docker run waiqin-poller check`, `... simulator`, `... tail`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: resolves and installs the project into a self-contained venv --------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Every dependency ships manylinux wheels, so no compiler is needed even here; the venv is
# what moves to the runtime stage, pip and the build front-end stay behind.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY poller ./poller
# Reproducible: every dependency (and the build backend) at the version and hashes of
# requirements.lock, then the project itself without resolving anything. A regular
# (non-editable) install: the runtime stage has no /src. pip compiles the .pyc files here,
# because the runtime root filesystem is read-only in Kubernetes.
RUN pip install --require-hashes --no-deps -r requirements.lock \
 && pip install --no-deps --no-build-isolation . \
 && pip uninstall --yes pip setuptools wheel

# ---- runtime: the venv, a non-root user and one writable directory ----------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="waiqin-poller" \
      org.opencontainers.image.description="Turns the Waiqin365 customer-task OpenAPI into typed CloudEvents on Kafka." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/operations.md"

# Fixed UID/GID so Kubernetes runAsUser/fsGroup and volume ownership are predictable.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" poller \
 && useradd --system --uid "${UID}" --gid poller --no-create-home \
      --home-dir /var/lib/waiqin-poller --shell /usr/sbin/nologin poller \
 && mkdir -p /var/lib/waiqin-poller \
 && chown poller:poller /var/lib/waiqin-poller \
 && chmod 0750 /var/lib/waiqin-poller

COPY --from=builder /opt/venv /opt/venv

# PYTHONUNBUFFERED: logs reach `docker logs`/kubectl at once, not when a buffer fills.
# PYTHONDONTWRITEBYTECODE: nothing tries to write .pyc files onto the read-only root filesystem.
# The SQLite store lives in the only writable directory; mount a volume there to keep it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POLLER_HTTP_PORT=8080 \
    POLLER_STORE_URL=sqlite:////var/lib/waiqin-poller/state.db

WORKDIR /var/lib/waiqin-poller
USER 10001:10001
EXPOSE 8080

# slim has no curl: ask /healthz (liveness: the poll loop is alive) with the stdlib.
# urlopen raises on a non-2xx answer or no answer, which exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POLLER_HTTP_PORT', '8080'), timeout=4)"]

# The daemon stops gracefully on SIGTERM within POLLER_SHUTDOWN_GRACE_SECONDS (default 20 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["waiqin-poller"]
CMD ["run"]

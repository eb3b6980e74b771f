# syntax=docker/dockerfile:1
# kubenetmon: one image for the agent (DaemonSet) and the gateway (Deployment); the role is
# decided by the YAML config (`kubenetmon run --config …`). Build: docker build -t kubenetmon:0.1.0 .
# Optional extras, e.g. the embedded ClickHouse for standalone use: --build-arg EXTRAS=chdb
#
# Without a Docker engine: scripts/build-image (buildah, Debian's packages only); tests/test_image.py
# builds this file with it and runs the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- stage 1: wheels for kubenetmon and every dependency (pytricia builds from source) ----
FROM ${PYTHON_IMAGE} AS wheels
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 SRC=/src WHEELS=/wheels
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubenetmon ./kubenetmon
RUN python -m pip wheel --wheel-dir "$WHEELS" "$SRC${EXTRAS:+[$EXTRAS]}"

# ---- stage 2: runtime, no compiler ----
FROM ${PYTHON_IMAGE}
ARG EXTRAS=""
# Unused by the steps; part of the layer cache key. buildah's layer cache (1.28) does not see a
# changed wheels stage through RUN --mount=from=wheels and would reuse a stale install layer, so
# scripts/build-image passes the wheels stage's image ID here. docker build needs nothing.
ARG WHEELS_ID=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 WHEELS=/wheels \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links "$WHEELS" "kubenetmon${EXTRAS:+[$EXTRAS]}"
# Example configs (agent, gateway, standalone) and the table DDL, for `kubenetmon validate`.
COPY config /usr/share/kubenetmon/config
# The gateway runs as this unprivileged user; the agent chart runs the same image as root with
# only NET_ADMIN (see charts/kubenetmon-agent securityContext).
RUN groupadd --system --gid 65532 kubenetmon \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin kubenetmon
USER 65532:65532
ENTRYPOINT ["kubenetmon"]
CMD ["--help"]

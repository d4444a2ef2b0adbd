# syntax=docker/dockerfile:1.7
# One image for the gateway (`roost serve`, the default command) and the Dagster code location
# (`dagster api grpc -m orchestration.definitions -a defs`, see deploy/dagster/values.yaml).
# No configuration or secret is baked in: settings come from the environment (ROOST_*), the
# registry/Redis/S3 URLs from Kubernetes Secrets (deploy/README.md).
#
#   docker build -t ghcr.io/roost-ml/roost:0.1.0 .

ARG PYTHON_VERSION=3.11

# -- build: a wheel of Roost and every dependency, in a throwaway virtualenv -----------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/roost
ENV PATH=/opt/roost/bin:$PATH
# Dependencies first (better layer caching), then the sources.
COPY pyproject.toml README.md ./
COPY registry/ registry/
COPY serving/ serving/
COPY warehouse/ warehouse/
COPY features/ features/
COPY assets/ assets/
COPY orchestration/ orchestration/
COPY analysis/ analysis/
COPY monitoring/ monitoring/
# k8s: the K8s run launcher and the PostgreSQL instance storage (pinned with the Dagster
# family); s3: artifacts and sealed logs in object storage.
RUN pip install ".[k8s,s3]"

# -- runtime: the virtualenv only, a non-root user ---------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PATH=/opt/roost/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROOST_HOME=/var/lib/roost \
    ROOST_HOST=0.0.0.0 \
    DAGSTER_HOME=/var/lib/roost/dagster
RUN groupadd --system --gid 10001 roost \
    && useradd --system --uid 10001 --gid roost --home-dir /var/lib/roost --shell /usr/sbin/nologin roost \
    && mkdir -p /var/lib/roost /app \
    && chown roost:roost /var/lib/roost
COPY --from=build /opt/roost /opt/roost
WORKDIR /app
# The code location's workspace and the embedded instance file (the cluster's comes from Helm).
COPY workspace.yaml dagster.yaml ./
COPY deploy/dagster/dagster.cluster.yaml ./deploy/dagster/dagster.cluster.yaml
USER 10001:10001
EXPOSE 8000 8001 3030
# No ENTRYPOINT: the Dagster chart runs its own command line (`dagster api grpc ...`) as args.
CMD ["roost", "serve"]

# One image for the Dagster code location, webserver, daemon and the ingest services.
# Exact base version; the Python dependencies are the ranges in pyproject.toml (extra `deploy`).
FROM python:3.11.13-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/perpflow
COPY pyproject.toml README.md ./
COPY ingest ingest
COPY pipelines pipelines
COPY transforms transforms
COPY warehouse warehouse
COPY dagster_project dagster_project
RUN pip install ".[deploy]" \
 && useradd --system --uid 10001 --user-group --home-dir /opt/perpflow --no-create-home perpflow \
 && mkdir -p /opt/dagster/home /data \
 && chown perpflow:perpflow /opt/dagster/home /data
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/home/
ENV DAGSTER_HOME=/opt/dagster/home PERPFLOW_HOME=/data
# Named volumes mounted on /data start with this owner, so the services write as perpflow.
USER perpflow

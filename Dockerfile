# One image for the Dagster code location, webserver, daemon and the ingest services.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/perpflow
COPY pyproject.toml README.md ./
COPY ingest ingest
COPY pipelines pipelines
COPY transforms transforms
COPY warehouse warehouse
COPY dagster_project dagster_project
RUN pip install . dagster-postgres==0.29.* \
 && mkdir -p /opt/dagster/home
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/home/
ENV DAGSTER_HOME=/opt/dagster/home PERPFLOW_HOME=/data

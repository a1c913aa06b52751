"""docker-compose cannot run here (no Docker engine), so check it statically against the code."""

from __future__ import annotations

import re

import dagster as dg
import yaml

from conftest import REPO
from dagster_project.maintenance import purge_old_runs
from pipelines.cli import main

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def env_of(service: str) -> dict:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def test_services_and_volumes():
    assert set(SERVICES) == {"kafka", "postgres", "dagster-code", "dagster-webserver", "dagster-daemon",
                             "ingest-binance-usdm"}
    assert set(COMPOSE["volumes"]) == {"kafka-data", "postgres-data", "warehouse", "ingest-binance-usdm"}
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in COMPOSE["volumes"]
    # Only the code location (where DefaultRunLauncher runs the runs) touches the warehouse.
    assert [s for s, v in SERVICES.items() if any(x.startswith("warehouse:") for x in v.get("volumes", []))] == \
        ["dagster-code"]


def test_kafka_is_kraft_single_node_and_clients_use_its_internal_listener():
    kafka = env_of("kafka")
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    internal = re.search(r"PLAINTEXT://(kafka:\d+)", kafka["KAFKA_ADVERTISED_LISTENERS"])[1]
    for service in ("dagster-code", "ingest-binance-usdm"):
        env = env_of(service)
        assert env["PERPFLOW_KAFKA_BOOTSTRAP"] == internal
        assert env["PERPFLOW_HOME"] == "/data"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_dagster_instance_and_workspace_match_the_services():
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    needed = {v["env"] for v in instance["storage"]["postgres"]["postgres_db"].values() if isinstance(v, dict)}
    for service in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        assert needed <= set(env_of(service)), service
    assert env_of("dagster-webserver")["DAGSTER_POSTGRES_HOST"] == "postgres"
    assert instance["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    assert instance["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    command = SERVICES["dagster-code"]["command"]
    assert server["host"] == "dagster-code" and str(server["port"]) == command[command.index("-p") + 1]
    module = command[command.index("-m") + 1]
    assert module == "dagster_project.definitions" and (REPO / "dagster_project" / "definitions.py").exists()


def test_service_commands_are_valid_perpflow_invocations():
    command = SERVICES["ingest-binance-usdm"]["command"]
    assert command[0] == "perpflow"
    ctx = main.make_context("perpflow", command[1:2], resilient_parsing=True)
    sub = main.get_command(ctx, command[1])
    assert sub is not None
    sub.make_context(command[1], list(command[2:]))   # raises on an unknown option or bad value
    dockerfile = (REPO / "Dockerfile").read_text()
    for package in ("ingest", "pipelines", "transforms", "warehouse", "dagster_project"):
        assert f"COPY {package} {package}" in dockerfile


def test_purge_deletes_only_old_finished_loader_runs(tmp_path):
    @dg.asset
    def tiny():
        return 1

    with dg.DagsterInstance.ephemeral() as instance:
        for _ in range(3):
            dg.materialize([tiny], instance=instance)
        run_ids = [r.dagster_run.run_id for r in instance.get_run_records()]
        job_name = instance.get_run_by_id(run_ids[0]).job_name
        assert purge_old_runs(instance, job_name, keep_days=1) == 0
        assert purge_old_runs(instance, job_name, keep_days=-1) == 3
        assert instance.get_run_records() == []

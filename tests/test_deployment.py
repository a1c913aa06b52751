"""docker-compose cannot run here (no Docker engine), so check it statically against the code.

Also the deployment's defaults: closed (loopback ports, no default password, non-root, pinned
versions), and `perpflow sql` read-only without file access unless asked.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib

import dagster as dg
import pytest
import yaml

from conftest import PERPFLOW, REPO
from dagster_project.maintenance import purge_old_runs
from ingest.venues import venue_names
from pipelines.cli import main
from test_exactly_once import trade
from warehouse.loader import insert_records
from warehouse.store import Warehouse

COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()
PASSWORD_VARIABLE = "DAGSTER_POSTGRES_PASSWORD"


class ComposeRefuses(ValueError):
    """What `docker compose` does with ${VAR:?message} when VAR is unset or empty."""


def interpolate(text: str, env: dict) -> str:
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}."""
    def substitute(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match["name"], match["op"], match["arg"] or ""
        value = env.get(name)
        missing = value is None or (operator in (":-", ":?") and value == "")
        if operator in (":?", "?") and missing:
            raise ComposeRefuses(f"{name}: {argument}")
        if operator in (":-", "-") and missing:
            return argument
        return value or ""
    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}", substitute, text)


def rendered(**env) -> dict:
    return yaml.safe_load(interpolate(COMPOSE_TEXT, env))


def env_of(service: str) -> dict:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def test_services_and_volumes():
    ingests = {f"ingest-{venue}" for venue in venue_names()}     # one service and volume per registered venue
    assert set(SERVICES) == {"kafka", "postgres", "dagster-code", "dagster-webserver", "dagster-daemon", *ingests}
    assert set(COMPOSE["volumes"]) == {"kafka-data", "postgres-data", "warehouse", *ingests}
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
    for service in ("dagster-code", *(f"ingest-{venue}" for venue in venue_names())):
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
    for venue in venue_names():
        command = SERVICES[f"ingest-{venue}"]["command"]
        assert command[0] == "perpflow" and command[command.index("--exchange") + 1] == venue
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


# --- closed by default ---------------------------------------------------------------------------

def published_ports(compose: dict) -> dict[str, list[str]]:
    return {name: [str(p) for p in service.get("ports", [])] for name, service in compose["services"].items()
            if service.get("ports")}


def test_published_ports_listen_on_loopback_unless_the_operator_opts_in():
    default = published_ports(rendered(**{PASSWORD_VARIABLE: "s3cret"}))
    assert default == {"kafka": ["127.0.0.1:9092:9092"], "dagster-webserver": ["127.0.0.1:3000:3000"]}
    opted_in = published_ports(rendered(**{PASSWORD_VARIABLE: "s3cret", "PERPFLOW_BIND": "0.0.0.0"}))
    assert opted_in == {"kafka": ["0.0.0.0:9092:9092"], "dagster-webserver": ["0.0.0.0:3000:3000"]}


def test_compose_refuses_to_start_without_a_password_and_holds_no_password_literal():
    with pytest.raises(ComposeRefuses, match=f"{PASSWORD_VARIABLE}: set {PASSWORD_VARIABLE} in .env"):
        rendered()
    with pytest.raises(ComposeRefuses):
        rendered(**{PASSWORD_VARIABLE: ""})
    secrets = {(service, key): str(value) for service, spec in SERVICES.items()
               for key, value in spec.get("environment", {}).items() if re.search("PASSWORD|SECRET|TOKEN", key)}
    assert set(secrets) == {("postgres", "POSTGRES_PASSWORD"), ("dagster-code", PASSWORD_VARIABLE),
                            ("dagster-webserver", PASSWORD_VARIABLE), ("dagster-daemon", PASSWORD_VARIABLE)}
    for where, value in secrets.items():
        assert re.fullmatch(r"\$\{%s:\?[^}]+\}" % PASSWORD_VARIABLE, value), where
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_db"]["password"] == {"env": PASSWORD_VARIABLE}
    for text in (COMPOSE_TEXT, DOCKERFILE, (REPO / "deploy" / "dagster.yaml").read_text()):
        assert not re.search(r"change-?me|\$\{\w*(PASSWORD|SECRET|TOKEN)\w*:?-", text, re.IGNORECASE)


def test_every_container_runs_as_a_non_root_user():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0") and re.search(rf"useradd .*\b{users[-1]}\b", DOCKERFILE)
    for name, service in SERVICES.items():
        if "build" in service:
            assert "user" not in service, f"{name} must keep the image's USER {users[-1]}"
        else:
            assert service.get("user") not in (None, "root", "0"), f"{name} runs as root"
    # The volumes the image's user writes start out owned by it.
    assert re.search(rf"chown {users[-1]}:{users[-1]} .*/data\b", DOCKERFILE)


def test_every_image_and_python_dependency_is_pinned_or_ranged():
    images = [service["image"] for service in SERVICES.values() if "image" in service]
    images += re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert len(images) == 3
    for image in images:
        name, _, tag = image.partition(":")
        assert re.match(r"\d+\.\d+", tag) and "latest" not in tag, f"{image} is not an exact version"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [install] = re.findall(r"pip install (.+?)(?:\s*\\|$)", DOCKERFILE, re.MULTILINE)
    assert install == '".[deploy]"'       # the ranges of pyproject.toml, nothing pinned on the side
    assert extras["deploy"] == ["dagster-postgres>=0.29,<0.30"]


# --- perpflow sql --------------------------------------------------------------------------------

def sql(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(tmp_path), COLUMNS="300")
    return subprocess.run([*PERPFLOW, "sql", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def published(tmp_path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    with warehouse.writer() as con:
        insert_records(con, map(trade, range(10)))
    warehouse.publish_replica()
    return warehouse


def test_sql_cannot_touch_files_unless_allowed(tmp_path, published):
    out = sql(tmp_path, "--csv", "select count(*) n from read_csv('/etc/passwd', sep=':', header=false)")
    text = " ".join(out.stdout.split())
    assert out.returncode == 1
    assert 'Cannot access file "/etc/passwd" - file system operations are disabled by configuration' in text
    assert "add --allow-file-access" in text
    out = sql(tmp_path, "copy (select 1) to '" + str(tmp_path / "out.csv") + "'")
    assert out.returncode == 1 and not (tmp_path / "out.csv").exists()

    lines = sum(1 for _ in open("/etc/passwd"))
    out = sql(tmp_path, "--allow-file-access", "--csv",
              "select count(*) n from read_csv('/etc/passwd', sep=':', header=false)")
    assert out.returncode == 0 and out.stdout.splitlines() == ["n", str(lines)], out.stdout + out.stderr


def test_sql_live_reads_the_live_file_and_cannot_write_it(tmp_path, published):
    with published.writer() as con:
        insert_records(con, map(trade, range(10, 15)))       # not yet in the replica
    assert sql(tmp_path, "--csv", "select count(*) n from raw.trades").stdout.splitlines() == ["n", "10"]
    assert sql(tmp_path, "--live", "--csv", "select count(*) n from raw.trades").stdout.splitlines() == ["n", "15"]
    out = sql(tmp_path, "--live", "delete from raw.trades")
    assert out.returncode == 1 and "read-only mode" in out.stdout
    with published.writer() as con:
        assert con.execute("select count(*) from raw.trades").fetchone()[0] == 15
    help_text = " ".join(sql(tmp_path, "--help").stdout.split())
    assert "read-only" in help_text and "Holds the writer lock" in help_text and "--allow-file-access" in help_text

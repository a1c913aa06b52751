"""Runtime settings, resolved once from environment, an optional TOML file and defaults.

Precedence is environment > config file > defaults, so one exported variable
(``PERPFLOW_KAFKA_BOOTSTRAP``) is enough to point every process at a real Kafka
cluster instead of the embedded development broker.

Config file: ``$PERPFLOW_CONFIG`` or ``./perpflow.toml`` if present::

    [kafka]
    bootstrap = "broker:19092"   # unset = embedded Tansu broker on 127.0.0.1:<broker.port>
    partitions = 3

    [broker]
    port = 19092

    [warehouse]
    home = "./data"

    [ingest]
    spill_max_bytes = 2147483648   # cap on the Kafka-outage spill file (PERPFLOW_SPILL_MAX_BYTES)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting is invalid; the message says which one and how to fix it."""


DEFAULT_BROKER_PORT = 19092
DEFAULT_PARTITIONS = 3
DEFAULT_SPILL_MAX_BYTES = 2 << 30


def _config_file() -> Path | None:
    explicit = os.environ.get("PERPFLOW_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(
                f"PERPFLOW_CONFIG points at {path}, which does not exist; "
                "create it or unset PERPFLOW_CONFIG to use the defaults."
            )
        return path
    local = Path("perpflow.toml")
    return local if local.is_file() else None


def _load_file(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax or remove the file.") from exc


def _int_setting(value: object, name: str, low: int, high: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be an integer between {low} and {high}, got {value!r}.") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {number}.")
    return number


def _validate_bootstrap(value: str, source: str) -> str:
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(
                f"{source} must be host:port[,host:port...], got {value!r}; "
                "for example PERPFLOW_KAFKA_BOOTSTRAP=localhost:9092."
            )
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    kafka_bootstrap: str | None  # None = use the embedded broker
    broker_port: int = DEFAULT_BROKER_PORT
    partitions: int = DEFAULT_PARTITIONS
    spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES
    config_file: Path | None = field(default=None, compare=False)

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the configured Kafka, or the embedded broker."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def replica_path(self) -> Path:
        return self.home / "warehouse_ro.duckdb"

    @property
    def lake_path(self) -> Path:
        return self.home / "lake"

    @property
    def run_dir(self) -> Path:
        """Pid files, state files and logs of services started by perpflow."""
        return self.home / "run"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def load_settings() -> Settings:
    path = _config_file()
    data = _load_file(path)
    kafka = data.get("kafka", {})
    broker = data.get("broker", {})
    warehouse = data.get("warehouse", {})
    ingest = data.get("ingest", {})

    home = Path(os.environ.get("PERPFLOW_HOME") or warehouse.get("home") or "data").expanduser().resolve()

    bootstrap = os.environ.get("PERPFLOW_KAFKA_BOOTSTRAP")
    source = "PERPFLOW_KAFKA_BOOTSTRAP"
    if not bootstrap and kafka.get("bootstrap"):
        bootstrap, source = str(kafka["bootstrap"]), f"[kafka] bootstrap in {path}"
    if bootstrap:
        bootstrap = _validate_bootstrap(bootstrap, source)

    port = _int_setting(
        os.environ.get("PERPFLOW_BROKER_PORT") or broker.get("port", DEFAULT_BROKER_PORT),
        "PERPFLOW_BROKER_PORT / [broker] port",
        1,
        65535,
    )
    partitions = _int_setting(
        os.environ.get("PERPFLOW_PARTITIONS") or kafka.get("partitions", DEFAULT_PARTITIONS),
        "PERPFLOW_PARTITIONS / [kafka] partitions",
        1,
        256,
    )
    spill_max_bytes = _int_setting(
        os.environ.get("PERPFLOW_SPILL_MAX_BYTES") or ingest.get("spill_max_bytes", DEFAULT_SPILL_MAX_BYTES),
        "PERPFLOW_SPILL_MAX_BYTES / [ingest] spill_max_bytes",
        1 << 20,
        1 << 50,
    )
    return Settings(home=home, kafka_bootstrap=bootstrap or None, broker_port=port,
                    partitions=partitions, spill_max_bytes=spill_max_bytes, config_file=path)

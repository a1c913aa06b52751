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

Every setting is declared once in ``OPTIONS`` (section, key, environment variable, kind,
default). A misspelt section or key, or a value of the wrong type, is an error that names the
file, the key, what is expected and how to fix it; an unknown ``PERPFLOW_*`` variable is a
warning (it may belong to another tool's version of perpflow).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting is invalid; the message says which one and how to fix it."""


DEFAULT_BROKER_PORT = 19092
DEFAULT_PARTITIONS = 3
DEFAULT_SPILL_MAX_BYTES = 2 << 30


class _Invalid(ValueError):
    """A value of the wrong kind; the caller adds where it came from and how to fix it."""


@dataclass(frozen=True)
class Integer:
    low: int
    high: int

    @property
    def expected(self) -> str:
        return f"an integer between {self.low} and {self.high}"

    def parse(self, value: object) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise _Invalid(self.expected)
        return value


@dataclass(frozen=True)
class HostPorts:
    expected: str = "host:port[,host:port...]"

    def parse(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Invalid(self.expected)
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise _Invalid(self.expected)
        return value


@dataclass(frozen=True)
class Directory:
    expected: str = "a directory path (a string)"

    def parse(self, value: object) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(self.expected)
        return Path(value).expanduser().resolve()


@dataclass(frozen=True)
class Option:
    """One setting: its ``Settings`` field, TOML section and key, environment variable, kind and default."""

    field: str
    section: str
    key: str
    env: str
    kind: Integer | HostPorts | Directory
    default: object
    example: str          # a valid value, as written in TOML

    @property
    def env_example(self) -> str:
        return self.example.strip('"')


OPTIONS = (
    Option("home", "warehouse", "home", "PERPFLOW_HOME", Directory(), "data", '"./data"'),
    Option("kafka_bootstrap", "kafka", "bootstrap", "PERPFLOW_KAFKA_BOOTSTRAP", HostPorts(), None,
           '"localhost:9092"'),
    Option("partitions", "kafka", "partitions", "PERPFLOW_PARTITIONS", Integer(1, 256), DEFAULT_PARTITIONS, "3"),
    Option("broker_port", "broker", "port", "PERPFLOW_BROKER_PORT", Integer(1, 65535), DEFAULT_BROKER_PORT,
           "19092"),
    Option("spill_max_bytes", "ingest", "spill_max_bytes", "PERPFLOW_SPILL_MAX_BYTES", Integer(1 << 20, 1 << 50),
           DEFAULT_SPILL_MAX_BYTES, "2147483648"),
)
# Variables read elsewhere, not through OPTIONS.
OTHER_ENV = ("PERPFLOW_CONFIG", "PERPFLOW_PARTITION_START")


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


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "."


def _check_names(path: Path, data: dict) -> None:
    """Every section and key in the file is one perpflow reads."""
    sections = sorted({o.section for o in OPTIONS})
    for name, value in data.items():
        if name not in sections:
            homes = sorted(f"[{o.section}]" for o in OPTIONS if o.key == name)
            where = f"; `{name}` belongs under {' or '.join(homes)}." if homes else _did_you_mean(name, sections)
            raise ConfigError(f"{path}: unknown section [{name}]{where} Known sections: "
                              + ", ".join(f"[{s}]" for s in sections) + ".")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: `{name}` must be a section ([{name}] followed by its keys), "
                              f"got {name} = {value!r}.")
        keys = [o.key for o in OPTIONS if o.section == name]
        for key in value:
            if key not in keys:
                raise ConfigError(f"{path}: unknown key `{key}` in [{name}]{_did_you_mean(key, keys)} "
                                  f"Keys perpflow reads in [{name}]: {', '.join(keys)}.")


def _resolve(option: Option, path: Path | None, data: dict) -> object:
    """Environment > config file > default."""
    from_env = os.environ.get(option.env)
    if from_env:
        try:
            return option.kind.parse(from_env)
        except _Invalid as exc:
            raise ConfigError(f"{option.env} must be {exc}, got {from_env!r}; for example "
                              f"{option.env}={option.env_example}, or unset it.") from None
    section = data.get(option.section, {})
    if option.key in section:
        value = section[option.key]
        try:
            return option.kind.parse(value)
        except _Invalid as exc:
            raise ConfigError(f"{path}: [{option.section}] {option.key} must be {exc}, got {value!r} "
                              f"({type(value).__name__}); write `{option.key} = {option.example}` under "
                              f"[{option.section}].") from None
    return option.kind.parse(option.default) if option.default is not None else None


def _unknown_env() -> list[str]:
    known = [o.env for o in OPTIONS] + list(OTHER_ENV)
    return [f"ignoring unknown environment variable {name}{_did_you_mean(name, known)} "
            f"perpflow reads {', '.join(known)}."
            for name in sorted(os.environ) if name.startswith("PERPFLOW_") and name not in known]


@dataclass(frozen=True)
class Settings:
    home: Path
    kafka_bootstrap: str | None  # None = use the embedded broker
    broker_port: int = DEFAULT_BROKER_PORT
    partitions: int = DEFAULT_PARTITIONS
    spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES
    config_file: Path | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

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
    if path is not None:
        _check_names(path, data)
    values = {option.field: _resolve(option, path, data) for option in OPTIONS}
    return Settings(**values, config_file=path, warnings=tuple(_unknown_env()))

"""Settings: typos and wrong types in perpflow.toml or PERPFLOW_* are clear errors, never silently ignored."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import PERPFLOW
from warehouse.settings import ConfigError, load_settings


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Write perpflow.toml and point PERPFLOW_CONFIG at it, with no other PERPFLOW_* set."""
    for name in [n for n in os.environ if n.startswith("PERPFLOW_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "perpflow.toml"
    monkeypatch.setenv("PERPFLOW_CONFIG", str(path))

    def write(text: str) -> Path:
        path.write_text(text)
        return path
    return write


def error_of() -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return str(caught.value)


def test_a_valid_file_is_read_and_the_environment_wins(config, monkeypatch, tmp_path):
    config('[kafka]\nbootstrap = "broker:9092"\npartitions = 6\n[broker]\nport = 20000\n'
           f'[warehouse]\nhome = "{tmp_path / "wh"}"\n')
    settings = load_settings()
    assert (settings.kafka_bootstrap, settings.partitions, settings.broker_port, settings.home) == \
        ("broker:9092", 6, 20000, tmp_path / "wh")
    assert settings.warnings == ()
    monkeypatch.setenv("PERPFLOW_PARTITIONS", "12")
    assert load_settings().partitions == 12


def test_a_misspelt_section_names_the_file_and_the_right_section(config):
    path = config('[kafak]\nbootstrap = "broker:9092"\n')
    message = error_of()
    assert message.startswith(f"{path}: unknown section [kafak]; did you mean 'kafka'?")
    assert "Known sections: [broker], [ingest], [kafka], [warehouse]." in message


def test_an_unknown_key_in_a_known_section_is_an_error(config):
    path = config("[kafka]\npartiton = 3\n")
    assert error_of() == (f"{path}: unknown key `partiton` in [kafka]; did you mean 'partitions'? "
                          "Keys perpflow reads in [kafka]: bootstrap, partitions.")


def test_a_key_outside_its_section_says_where_it_belongs(config):
    path = config("partitions = 3\n")
    assert error_of().startswith(f"{path}: unknown section [partitions]; `partitions` belongs under [kafka].")


@pytest.mark.parametrize("line, got", [('partitions = "three"', "'three' (str)"), ("partitions = 3.5", "3.5 (float)"),
                                       ("partitions = true", "True (bool)"), ("partitions = 0", "0 (int)")])
def test_a_wrong_type_names_file_key_expectation_and_fix(config, line, got):
    path = config(f"[kafka]\n{line}\n")
    assert error_of() == (f"{path}: [kafka] partitions must be an integer between 1 and 256, got {got}; "
                          "write `partitions = 3` under [kafka].")


def test_wrong_types_of_every_kind(config):
    path = config("[kafka]\nbootstrap = 9092\n")
    assert error_of().startswith(f"{path}: [kafka] bootstrap must be host:port[,host:port...], got 9092 (int)")
    path = config("[warehouse]\nhome = 7\n")
    assert error_of().startswith(f"{path}: [warehouse] home must be a directory path (a string), got 7 (int)")
    path = config('kafka = "broker:9092"\n')
    assert error_of() == f"{path}: `kafka` must be a section ([kafka] followed by its keys), got kafka = 'broker:9092'."


def test_a_bad_environment_value_names_the_variable_and_an_example(config, monkeypatch):
    config("")
    monkeypatch.setenv("PERPFLOW_PARTITIONS", "three")
    assert error_of() == ("PERPFLOW_PARTITIONS must be an integer between 1 and 256, got 'three'; "
                          "for example PERPFLOW_PARTITIONS=3, or unset it.")


def test_an_unknown_perpflow_variable_is_a_warning(config, monkeypatch):
    config("")
    monkeypatch.setenv("PERPFLOW_PARTITONS", "3")
    monkeypatch.setenv("PERPFLOW_PARTITION_START", "2024-01-01")    # read by the Dagster partitions
    [warning] = load_settings().warnings
    assert warning.startswith("ignoring unknown environment variable PERPFLOW_PARTITONS; did you mean "
                              "'PERPFLOW_PARTITIONS'?")


def test_the_cli_exits_non_zero_with_the_message(tmp_path):
    path = tmp_path / "perpflow.toml"
    path.write_text('[kafak]\nbootstrap = "localhost:9092"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_CONFIG=str(path), PERPFLOW_HOME=str(tmp_path / "home"), COLUMNS="300")
    out = subprocess.run([*PERPFLOW, "load"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"{path}: unknown section [kafak]; did you mean 'kafka'?" in " ".join(out.stderr.split())
    env.update(PERPFLOW_CONFIG="", PERPFLOW_HOMEDIR="x")
    out = subprocess.run([*PERPFLOW, "sql", "select 1"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no read replica" in out.stdout
    assert "warning: ignoring unknown environment variable PERPFLOW_HOMEDIR; did you mean 'PERPFLOW_HOME'?" \
        in out.stderr

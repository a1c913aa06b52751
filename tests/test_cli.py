"""The perpflow command line: clear errors for bad input, broker lifecycle, sql on the replica."""

from __future__ import annotations

import os
import subprocess

from conftest import PERPFLOW, binance_recording
from pipelines.broker import free_port


def run(args, env=None, timeout=120):
    return subprocess.run([*PERPFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)


def base_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(tmp_path / "home"), COLUMNS="200", **extra)
    return env


def test_bad_arguments_say_what_is_wrong(tmp_path):
    out = run(["replay", "--exchange", "kraken", "x.jsonl"], env=base_env(tmp_path))
    assert out.returncode == 2 and "'kraken' is not one of" in out.stderr and "'binance-usdm'" in out.stderr
    out = run(["replay", "--exchange", "binance-usdm", str(tmp_path / "missing.jsonl")], env=base_env(tmp_path))
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = run(["load"], env=base_env(tmp_path, PERPFLOW_KAFKA_BOOTSTRAP="no-port-here"))
    assert out.returncode == 2 and "must be host:port" in out.stderr and "PERPFLOW_KAFKA_BOOTSTRAP" in out.stderr
    out = run(["load"], env=base_env(tmp_path, PERPFLOW_BROKER_PORT="99999"))
    assert out.returncode == 2 and "between 1 and 65535" in out.stderr
    out = run(["load"], env=base_env(tmp_path, PERPFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}"))
    assert out.returncode == 1 and "no Kafka broker answered" in out.stdout and "perpflow broker start" in out.stdout
    (tmp_path / "bad.toml").write_text("[kafka\nbootstrap=")
    out = run(["load"], env=base_env(tmp_path, PERPFLOW_CONFIG=str(tmp_path / "bad.toml")))
    assert out.returncode == 2 and "not valid TOML" in out.stderr
    out = run(["sql", "select 1"], env=base_env(tmp_path))
    assert out.returncode == 1 and "no read replica" in out.stdout


def test_broker_start_status_stop_and_a_full_cli_round_trip(tmp_path):
    env = base_env(tmp_path, PERPFLOW_BROKER_PORT=str(free_port()))
    try:
        out = run(["broker", "start"], env=env)
        assert out.returncode == 0 and "broker started" in out.stdout, out.stdout + out.stderr
        assert "already running" in run(["broker", "start"], env=env).stdout
        out = run(["broker", "status"], env=env)
        assert out.returncode == 0 and "answering" in out.stdout
        assert run(["replay", "--exchange", "binance-usdm", *map(str, binance_recording())], env=env).returncode == 0
        assert run(["load"], env=env).returncode == 0
        out = run(["sql", "--csv", "select symbol, count(*) n from raw.trades group by 1 order by 1"], env=env)
        assert out.stdout.splitlines() == ["symbol,n", "AKRO-USDT-PERP,8", "CTK-USDT-PERP,38", "KEEP-USDT-PERP,5",
                                           "SUSHI-USDT-PERP,40"]
        out = run(["sql", "select nonsense from nowhere"], env=env)
        assert out.returncode == 1 and "nowhere" in out.stdout
    finally:
        out = run(["broker", "stop"], env=env)
    assert "broker stopped" in out.stdout
    out = run(["broker", "status"], env=env)
    assert out.returncode == 3 and "NOT answering" in out.stdout

"""Shared fixtures: real Tansu brokers on free ports, temporary warehouses, the real recordings."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipelines.broker import EmbeddedBroker, free_port
from ingest.kafka import ensure_topics
from warehouse.store import Warehouse

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CAPTURES = SHARED_DATA / "cryptofeed-captures"
PERPFLOW = [sys.executable, "-m", "pipelines.cli"]


# Real recordings of the other venues come from public repositories (tests/fixtures/README.md says
# which); they are not redistributed here, so tests that need them look where the operator put them.
VENUE_RECORDINGS = Path(os.environ.get("PERPFLOW_VENUE_RECORDINGS", SHARED_DATA / "venue-recordings"))


def venue_recording(*parts: str) -> Path:
    """A real recording under ``$PERPFLOW_VENUE_RECORDINGS`` (default ../shared/data/venue-recordings)."""
    path = VENUE_RECORDINGS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real recording {'/'.join(parts)} not on this machine (see tests/fixtures/README.md)")
    return path


def binance_recording() -> list[Path]:
    files = sorted(CAPTURES.glob("BINANCE_FUTURES.*"))
    if not files:
        pytest.skip("../shared/data/cryptofeed-captures is not available")
    return files


@pytest.fixture
def recording() -> list[Path]:
    return binance_recording()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One broker for tests that only need *a* Kafka (they use their own topics or don't care)."""
    with EmbeddedBroker(port=free_port(), log_path=tmp_path_factory.mktemp("broker") / "broker.log") as b:
        yield b


@pytest.fixture
def fresh_broker(tmp_path):
    """A broker of its own, for tests that count what is in the standard md.* topics."""
    b = EmbeddedBroker(port=free_port(), log_path=tmp_path / "broker.log").start()
    ensure_topics(b.bootstrap, partitions=3)
    yield b
    b.stop()


@pytest.fixture
def warehouse(tmp_path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse.duckdb")


def perpflow_env(home: Path, bootstrap: str) -> dict:
    """Environment for running the perpflow CLI as a subprocess: this home, this Kafka, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(home), PERPFLOW_KAFKA_BOOTSTRAP=bootstrap)
    return env


@pytest.fixture
def cli_env(tmp_path, fresh_broker):
    """Environment for running the perpflow CLI as a subprocess against the fresh broker."""
    return perpflow_env(tmp_path / "home", fresh_broker.bootstrap)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class TinyDisk:
    """A real tmpfs of its own, so a test can fill a disk and give space back."""

    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@contextmanager
def tiny_disk_at(path: Path, size: str):
    """Mount a tmpfs of ``size`` at ``path`` (skipping the test where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill a disk here ({out.stderr.strip() or out.returncode}); "
                    "needs root or CAP_SYS_ADMIN")
    try:
        yield TinyDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def tiny_disk(tmp_path) -> TinyDisk:
    """A 1 MiB file system that fills up."""
    with tiny_disk_at(tmp_path / "disk", "1m") as disk:
        yield disk


@pytest.fixture(scope="session")
def cascade_truth(tmp_path_factory) -> dict[str, list[dict]]:
    """Ground truth of one short simulated cascade (seed 7; 15 calm minutes, trigger, 60 minutes),
    liquidation-level snapshots every 5 minutes; no payloads built (about 10 s)."""
    from ingest.simulator import ExchangeFeed, SimConfig, load_truth

    path = tmp_path_factory.mktemp("cascade-truth") / "truth.jsonl"
    ExchangeFeed(SimConfig(scenario="cascade", seed=7, hours=1.25, checkpoint_every_s=300), path).run_truth_only()
    return load_truth(path)

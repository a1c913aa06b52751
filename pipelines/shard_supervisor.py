"""``perpflow ingest --shards N``: start a venue's N shard processes, restart any that dies, stop them all.

Each shard is a plain ``perpflow ingest --shard i/N`` process in a session of its own (a terminal's
Ctrl-C reaches the supervisor only, which then stops the shards in order). A shard that exits
non-zero or is killed is restarted after a backoff that doubles with each failure in a row (reset once
a shard has run ``STEADY_S``), and every restart is counted in the supervisor's status file
``<home>/run/supervisor-ingest-<venue>.json``, which ``perpflow status`` shows with the shards' own
status files. A shard that fails ``max_failures_in_a_row`` times in a row without ever running
``STEADY_S`` (bad symbols, a venue that refuses us) stops the supervisor with a non-zero exit instead of
restarting forever. A shard that exits 0 (``--duration``) is done and stays stopped.

On SIGINT or SIGTERM every shard gets SIGTERM (the ingest service's clean stop: flush, save state),
and SIGKILL after ``grace_s``, so everything is down within ``grace_s`` plus a moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STEADY_S = 60.0


@dataclass
class ShardProcess:
    index: int
    argv: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0             # monotonic
    restarts: int = 0
    failures_in_a_row: int = 0
    last_exit: int | None = None        # exit code, or -signal when killed
    restart_at: float | None = None     # monotonic time of the next start, while waiting
    done: bool = False                  # exited 0 by itself


class ShardFailing(RuntimeError):
    pass


@dataclass
class ShardSupervisor:
    exchange: str
    argvs: Sequence[Sequence[str]]      # one command line per shard
    status_path: Path
    log_dir: Path | None = None         # each shard's output to <log_dir>/<stem>.log; None: inherited
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_failures_in_a_row: int = 5
    grace_s: float = 8.0
    poll_s: float = 0.2
    on_event: Callable[[str], None] = print
    shards: list[ShardProcess] = field(init=False)
    _stop_signal: int | None = field(init=False, default=None)

    def __post_init__(self):
        self.shards = [ShardProcess(i, list(argv)) for i, argv in enumerate(self.argvs)]

    def run(self) -> int:
        """Until a stop signal (exit 0 when every shard stopped cleanly), every shard done (0) or a shard
        failing over and over (1)."""
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for shard in self.shards:
                self._start(shard)
            failure = None
            while self._stop_signal is None and not all(s.done for s in self.shards):
                try:
                    self._watch()
                except ShardFailing as exc:
                    failure = str(exc)
                    break
                self._write_status()
                time.sleep(self.poll_s)
            clean = self._stop_all()
            self._write_status(stopped=True, failure=failure)
            if failure:
                self.on_event(f"stopped: {failure}")
                return 1
            return 0 if clean else 1
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _request_stop(self, signum, frame) -> None:
        self._stop_signal = signum

    def _name(self, shard: ShardProcess) -> str:
        return f"shard {shard.index}/{len(self.shards)}"

    def _start(self, shard: ShardProcess) -> None:
        if self.log_dir is None:
            shard.process = subprocess.Popen(shard.argv, start_new_session=True)
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"ingest-{self.exchange}.shard-{shard.index}-of-{len(self.shards)}.log"
            with open(log, "ab") as out:    # the child keeps its own descriptor
                shard.process = subprocess.Popen(shard.argv, start_new_session=True, stdout=out,
                                                 stderr=subprocess.STDOUT)
        shard.started_at, shard.restart_at = time.monotonic(), None
        self.on_event(f"{self._name(shard)} started: pid {shard.process.pid}")

    def _watch(self) -> None:
        now = time.monotonic()
        for shard in self.shards:
            if shard.done:
                continue
            if shard.restart_at is not None:
                if now >= shard.restart_at:
                    shard.restarts += 1
                    self._start(shard)
                continue
            ran_s = now - shard.started_at
            if shard.process.poll() is None:
                if ran_s >= STEADY_S:
                    shard.failures_in_a_row = 0
                continue
            shard.last_exit = shard.process.returncode
            if shard.last_exit == 0:
                shard.done = True
                self.on_event(f"{self._name(shard)} finished")
                continue
            shard.failures_in_a_row = 1 if ran_s >= STEADY_S else shard.failures_in_a_row + 1
            if shard.failures_in_a_row >= self.max_failures_in_a_row:
                raise ShardFailing(f"{self._name(shard)} failed {shard.failures_in_a_row} times in a row within "
                                   f"{STEADY_S:.0f}s of starting (last exit {shard.last_exit}); see its log")
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (shard.failures_in_a_row - 1))
            shard.restart_at = now + delay
            self.on_event(f"{self._name(shard)} exited {shard.last_exit}; restarting in {delay:.1f}s")

    def _stop_all(self) -> bool:
        """SIGTERM to every running shard, SIGKILL after ``grace_s``; True when all exited 0."""
        running = [s for s in self.shards if s.process is not None and s.process.poll() is None]
        for shard in running:
            shard.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for shard in running:
            try:
                shard.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                shard.process.kill()
                shard.process.wait()
            shard.last_exit = shard.process.returncode
        return all(s.last_exit == 0 for s in self.shards)

    def _write_status(self, stopped: bool = False, failure: str | None = None) -> None:
        now = time.monotonic()
        status = {"service": "ingest-supervisor", "exchange": self.exchange, "pid": os.getpid(),
                  "updated_at": time.time(), "state": "stopped" if stopped else "running", "failure": failure,
                  "shards": [{"shard": f"{s.index}/{len(self.shards)}",
                              "pid": s.process.pid if s.process else None, "restarts": s.restarts,
                              "last_exit": s.last_exit, "done": s.done,
                              "restart_in_s": None if s.restart_at is None else round(s.restart_at - now, 1)}
                             for s in self.shards]}
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.status_path)


def supervisor_status_path(run_dir: Path, exchange: str) -> Path:
    return run_dir / f"supervisor-ingest-{exchange}.json"

"""Run a command as its own process group and take the whole group down on Ctrl-C or SIGTERM.

`dagster dev` starts a code server, a gRPC server, the webserver and the daemon; replacing perpflow
with it (exec) left those children alive after SIGTERM, and they ignored a single SIGINT while
starting. Here the group is asked to stop the way a terminal would (SIGINT to every member), then
told (SIGTERM), then killed, so nothing outlives `perpflow ui` by more than ``grace_s`` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class _Stop(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_stop(signum, frame):
    raise _Stop(signum)


def group_members(pgid: int) -> list[int]:
    """Pids of the group's running members; zombies do not count (their parent may never reap them)."""
    proc = Path("/proc")
    if not proc.is_dir():   # not Linux: any member, zombie or not
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:   # exited while we looked
            continue
        state, _ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def stop_group(child: subprocess.Popen, grace_s: float = 8.0) -> None:
    """SIGINT, then SIGTERM at half the grace, then SIGKILL; returns once no member runs."""
    pgid = child.pid
    start = time.monotonic()
    escalation = [(start, signal.SIGINT), (start + grace_s / 2, signal.SIGTERM), (start + grace_s, signal.SIGKILL)]
    while True:
        now = time.monotonic()
        while escalation and escalation[0][0] <= now:
            _signal_group(pgid, escalation.pop(0)[1])
        child.poll()
        # after SIGKILL only an unkillable (D-state) process can remain; do not hang on it
        if not group_members(pgid) or (not escalation and now > start + grace_s + 2):
            return
        time.sleep(0.05)


def run_process_group(argv: Sequence[str], *, on_start: Callable[[int], None] = lambda pgid: None,
                      grace_s: float = 8.0) -> int:
    """Run ``argv`` in a new session; its exit code, or 128+signal when perpflow was signalled."""
    stops = {signal.SIGINT, signal.SIGTERM}
    previous = {s: signal.signal(s, _raise_stop) for s in stops}
    child = None
    try:
        # Held back until `child` is set, so a signal cannot orphan a group we have not recorded yet.
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            child = subprocess.Popen(list(argv), start_new_session=True,
                                     preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, stops))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        on_start(child.pid)
        return child.wait()
    except _Stop as stop:
        for signum in stops:   # a second Ctrl-C must not abandon the group half-stopped
            signal.signal(signum, signal.SIG_IGN)
        if child is not None:
            stop_group(child, grace_s)
        return 128 + stop.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

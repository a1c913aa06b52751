"""The ``simulate`` command: clear errors for bad values, and a real run that serves, reports its
URLs, writes ground truth and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import websockets
from click.testing import CliRunner

from ingest.simulator import load_truth
from ingest.simulator.cli import simulate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, message", [
    (["--speed", "0"], "Invalid value for '--speed'"),
    (["--symbols", "BTCUSDT,DOGEUSDX"], "unsupported symbol 'DOGEUSDX'; supported symbols are BTCUSDT, ETHUSDT, SOLUSDT"),
    (["--stall", "markPrice@1s"], "must look like STREAM:START_S:DURATION_S"),
    (["--stall", "btcusdt@kline_1m:10:5"], "not a simulated stream"),
    (["--rest-error-rate", "1.5"], "Invalid value for '--rest-error-rate'"),
    (["--scenario", "cascade", "--hours", "0.9"], "the cascade scenario needs --hours >= 1 "),
    (["--start", "yesterday"], "is not ISO-8601"),
    (["--gap-every", "-5"], "Invalid value for '--gap-every'"),
    (["--scenario", "panic"], "'panic' is not one of 'calm', 'cascade'"),
])
def test_bad_values_are_rejected_with_a_clear_message(args, message):
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 2
    assert message in result.output


def test_runs_serves_and_stops_cleanly_on_sigterm(tmp_path):
    truth = tmp_path / "truth.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.simulator", "--hours", "0.5", "--speed", "20", "--seed", "4",
         "--truth", str(truth)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "market ws" in line:
                break
        url = re.search(r"(ws://\S+/market/stream\?streams=\S+)", "".join(lines)).group(1)

        async def frames():
            async with websockets.connect(url) as ws:
                return [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(20)]

        received = asyncio.run(frames())
        assert {f["stream"].split("@", 1)[1] for f in received} <= {"aggTrade", "markPrice@1s", "forceOrder@arr"}
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stopped at" in output
    records = load_truth(truth)
    assert records["meta"][0]["seed"] == 4 and records["second"]
    # Whatever was published before SIGTERM is in the truth, even from the last, partial second.
    truth_ids = {(r["symbol"], i) for r in records["second"] if r["agg_first"] is not None
                 for i in range(r["agg_first"], r["agg_last"] + 1)}
    sent = {(f["data"]["s"], f["data"]["a"]) for f in received if f["stream"].endswith("@aggTrade")}
    assert sent and sent <= truth_ids

"""Fault-matrix harness: real processes end to end, and an account of every trade against the truth.

A case runs the exchange simulator (its own process, writing the ground truth), `perpflow ingest`
(its own process, killed and restarted as the fault demands), a Tansu broker of its own and
`perpflow load` into a real DuckDB file; then it sorts every trade id the simulator published into
loaded, lost with a feed event that names it, or lost silently, and counts duplicates.

Run as a script (``python tests/fault_harness.py simulate ...``) it is the simulator: the same
``perpflow simulate`` command and flags, except that it keeps serving after the scenario ends (so
the last trades are not cut off by the server going away) and prints the simulated clock, which is
what the tests wait on instead of wall time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import orjson

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))   # conftest, when run as the simulator script

from conftest import PERPFLOW, perpflow_env  # noqa: E402
from ingest.service import IngestService  # noqa: E402
from ingest.simulator import SimulatorThread  # noqa: E402

EXCHANGE = "binance-usdm"
LISTENING = re.compile(r"^listening (\S+) (\S+)$")
CLOCK = re.compile(r"^now (\d+)$")
FINISHED = "scenario finished"
#: A feed event may account for lost ids by range (``first_id``/``last_id``) or, where the ids are
#: not known (records dropped from a full spill), by ``count``.
COUNT_KEY = "count"


def wait_for(condition: Callable[[], object], what: str, timeout: float, interval: float = 0.5):
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- processes --------------------------------------------------------------------------------

class SimulatorProcess:
    """The simulator in a process of its own, with ``perpflow simulate``'s flags."""

    def __init__(self, workdir: Path, args: list[str]):
        self.truth_path = workdir / "truth.jsonl"
        self.log_path = workdir / "simulator.log"
        self.args = ["--port", "0", "--truth", str(self.truth_path), *args]
        self.process: subprocess.Popen | None = None
        self.ws_url = self.http_url = ""

    def start(self) -> "SimulatorProcess":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, str(HERE), "simulate", *self.args], stdout=log,
                                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"simulator {' '.join(self.args)} exited {self.process.returncode}:\n"
                                     + self.log_path.read_text())
            found = [m for m in map(LISTENING.match, self._lines()) if m]
            return found[0] if found else None

        match = wait_for(listening, "the simulator to listen", 60, 0.2)
        self.ws_url, self.http_url = match.group(1), match.group(2)
        return self

    def _lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def now_ms(self) -> int:
        """Simulated time, as last printed (twice a wall second)."""
        clocks = [m for m in map(CLOCK.match, self._lines()) if m]
        return int(clocks[-1].group(1)) if clocks else 0

    def wait_simulated(self, seconds: float, timeout: float = 120) -> None:
        """Let ``seconds`` of market time pass (the faults are measured in what the venue publishes)."""
        target = self.now_ms() + seconds * 1000
        wait_for(lambda: self.now_ms() >= target or self.finished, f"{seconds:g} simulated seconds", timeout)

    @property
    def finished(self) -> bool:
        return FINISHED in self._lines()

    def wait_finished(self, timeout: float = 300) -> None:
        wait_for(lambda: self.finished, "the scenario to finish", timeout)

    def stop(self) -> None:
        stop_process(self.process)


class IngestProcess:
    """`perpflow ingest` for one venue, started and stopped (or killed) as the case needs."""

    def __init__(self, env: dict, sim: SimulatorProcess, symbols: list[str], extra: list[str] = ()):
        self.env = {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
        self.command = [*PERPFLOW, "ingest", "--exchange", EXCHANGE, "--symbols", ",".join(symbols),
                        "--ws-url", sim.ws_url, "--rest-url", sim.http_url, *extra]
        self.run_dir = Path(env["PERPFLOW_HOME"]) / "run"
        self.status_path = self.run_dir / f"ingest-{EXCHANGE}.json"
        self.spill_path = self.run_dir / f"spill-{EXCHANGE}.jsonl"
        self.log_path = Path(env["PERPFLOW_HOME"]).parent / "ingest.log"
        self.process: subprocess.Popen | None = None
        self.exit_codes: list[int] = []

    def start(self) -> "IngestProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict:
        """The service's last status file (replaced atomically), or {} before the first one."""
        try:
            st = json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return st if self.process is None or st.get("pid") == self.process.pid else {}

    def trades_seen(self) -> int:
        return self.status().get("records", {}).get("trade", 0)

    def wait_trades(self, more_than: int = 0, timeout: float = 90) -> None:
        def flowing():
            if not self.running:
                raise AssertionError(f"perpflow ingest exited {self.process.returncode}:\n{self.log()}")
            return self.trades_seen() > more_than
        wait_for(flowing, f"perpflow ingest to publish more than {more_than} trades", timeout)

    def stay_up(self, seconds: float) -> None:
        """Let a fault last ``seconds`` of wall time (its definition), failing at once if ingest dies."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.running, f"perpflow ingest exited {self.process.returncode} during the fault:\n{self.log()}"
            time.sleep(1.0)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.exit_codes.append(self.process.wait(30))

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM and wait: a clean stop flushes what Kafka will take and spills the rest."""
        code = stop_process(self.process, timeout)
        self.exit_codes.append(code)
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def stop_process(process: subprocess.Popen | None, timeout: float = 30) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run_loader(env, kill_after_commits: int | None = None) -> tuple[int, str]:
    """`perpflow load` as a subprocess; SIGKILLed right after transaction ``kill_after_commits`` if given."""
    proc = subprocess.Popen([*PERPFLOW, "load", "--batch-rows", "10000"], env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if kill_after_commits and line.strip().startswith(f"committed transaction {kill_after_commits}:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    return proc.returncode, "".join(output)


# --- the account --------------------------------------------------------------------------------

def truth_trade_ids(truth) -> set:
    """(symbol, aggTrade id) for every aggTrade the simulated venue published."""
    return {(s["symbol"], i) for s in truth["second"] if s["agg_first"] is not None
            for i in range(s["agg_first"], s["agg_last"] + 1)}


def last_truth_ids(truth) -> dict[str, int]:
    last: dict[str, int] = {}
    for s in truth["second"]:
        if s["agg_last"] is not None:
            last[s["symbol"]] = max(last.get(s["symbol"], -1), s["agg_last"])
    return last


def loaded_last_ids(db_path: Path) -> dict[str, int]:
    if not db_path.exists():
        return {}
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return dict(con.execute("SELECT symbol_native, max(CAST(trade_id AS BIGINT)) FROM raw.trades "
                                "GROUP BY 1").fetchall())
    except duckdb.CatalogException:
        return {}
    finally:
        con.close()


@dataclass
class Account:
    """Per fault: what the venue published against what the warehouse holds."""

    fault: str
    expected: int = 0            # trade ids published from the first one perpflow got to the scenario's end
    in_duckdb: int = 0           # of those, loaded
    lost_with_event: int = 0     # missing, inside a range (or count) a feed event reported
    lost_silently: int = 0       # missing and reported nowhere
    duplicated: int = 0          # rows beyond one per (exchange, symbol, trade_id)
    invented: int = 0            # loaded ids the venue never published
    books_compared: int = 0      # truth checkpoints the loaded book chain was compared at (all equal)
    book_mismatches: list = field(default_factory=list)
    dead_letters: int = 0
    first_trade_ms: int = 0      # exchange time of the first trade loaded
    feed_events: dict = field(default_factory=dict)
    ingest_exit_codes: list = field(default_factory=list)
    silent_examples: dict = field(default_factory=dict)   # first few silently lost ids per symbol


def account(fault: str, db_path: Path, truth: dict, symbols: list[str]) -> Account:
    from ingest.venues.binance_usdm import BinanceUsdm

    normalize_symbol = BinanceUsdm().normalize_symbol

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute("SELECT symbol_native, CAST(trade_id AS BIGINT) FROM raw.trades").fetchall()
        total, distinct = con.execute("SELECT count(*), count(DISTINCT (exchange, symbol, trade_id)) "
                                      "FROM raw.trades").fetchone()
        events = con.execute("SELECT symbol, kind, detail FROM raw.feed_events").fetchall()
        dead_letters = con.execute("SELECT count(*) FROM raw.dead_letters").fetchone()[0]
        first_trade_ms = con.execute("SELECT epoch_ms(min(ts_exchange)) FROM raw.trades").fetchone()[0] or 0
        book_rows = con.execute(
            "SELECT symbol_native, 'snapshot', seq, NULL, NULL, reason, bids, asks FROM raw.book_snapshots "
            "UNION ALL SELECT symbol_native, 'delta', NULL, first_seq, last_seq, CAST(prev_seq AS VARCHAR), bids, "
            "asks FROM raw.book_deltas").fetchall()
    finally:
        con.close()
    acc = Account(fault, duplicated=total - distinct, dead_letters=dead_letters, first_trade_ms=first_trade_ms,
                  feed_events=dict(Counter(kind for _, kind, _ in events)))
    loaded = defaultdict(set)
    for native, trade_id in rows:
        loaded[native].add(trade_id)
    published = truth_trade_ids(truth)
    acc.invented = sum(1 for native, ids in loaded.items() for i in ids if (native, i) not in published)

    reported: dict[str | None, list[tuple[int, int]]] = defaultdict(list)
    counted: Counter = Counter()
    for symbol, _, detail in events:
        info = orjson.loads(detail) if detail else {}
        if not isinstance(info, dict):
            continue
        if isinstance(info.get("first_id"), int) and isinstance(info.get("last_id"), int):
            reported[symbol].append((info["first_id"], info["last_id"]))
        elif isinstance(info.get(COUNT_KEY), int):
            counted[symbol] += info[COUNT_KEY]

    by_symbol = defaultdict(list)
    for native, trade_id in sorted(published):
        by_symbol[native].append(trade_id)
    for native in symbols:
        got = loaded.get(native, set())
        # Before its first trade perpflow was not yet listening; a symbol with none lost everything.
        expected = [i for i in by_symbol[native] if not got or i >= min(got)]
        missing = [i for i in expected if i not in got]
        ranges = reported[normalize_symbol(native)]
        unreported = [i for i in missing if not any(a <= i <= b for a, b in ranges)]
        explained = min(counted[normalize_symbol(native)], len(unreported))
        feed_wide = min(counted[None], len(unreported) - explained)   # events without a symbol
        counted[None] -= feed_wide
        explained += feed_wide
        acc.expected += len(expected)
        acc.in_duckdb += len(expected) - len(missing)
        acc.lost_with_event += len(missing) - len(unreported) + explained
        acc.lost_silently += len(unreported) - explained
        if len(unreported) > explained:
            acc.silent_examples[native] = unreported[:5] + ["..."] + unreported[-3:]
    acc.books_compared, acc.book_mismatches = compare_books(book_rows, truth)
    return acc


def compare_books(book_rows, truth) -> tuple[int, list]:
    """Rebuild each book from the loaded snapshots and deltas and compare it with the true book at every
    checkpoint the venue's own sequencing rules can reach.

    Deltas are taken in sequence order with repeats removed (as the analytics de-duplicate on natural
    keys), so a spill that re-sent or reordered records costs nothing; a missing delta breaks the chain,
    and the book is trusted again only from a sync snapshot the next delta bridges. A wrong level, a
    crossed book or a delta the chain cannot explain is never hidden: it is a mismatch.
    """
    from types import SimpleNamespace

    from ingest.venues.binance_usdm import BinanceUsdm
    from transforms.order_book import OrderBook

    rules = BinanceUsdm.rules
    checkpoints = defaultdict(dict)
    for cp in truth.get("book", ()):
        checkpoints[cp["symbol"]][cp["last_update_id"]] = cp
    snapshots, deltas = defaultdict(list), defaultdict(dict)
    levels = lambda side: [(level["price"], level["qty"]) for level in side]   # noqa: E731
    for native, kind, seq, first_seq, last_seq, extra, bids, asks in book_rows:
        if kind == "snapshot" and extra in ("sync", "resync"):
            snapshots[native].append((seq, bids, asks))
        elif kind == "delta":
            deltas[native][last_seq] = SimpleNamespace(first_seq=first_seq, last_seq=last_seq,
                                                       prev_seq=int(extra) if extra else None, bids=bids, asks=asks)
    compared, mismatches = 0, []
    for native, chain in deltas.items():
        book, previous = None, None
        for delta in (chain[u] for u in sorted(chain)):
            if book is None or not rules.continues(delta, previous):
                bridging = [s for s in snapshots[native] if rules.bridges(delta, s[0])]
                if not bridging:
                    book = None
                    continue
                _, bids, asks = max(bridging, key=lambda s: s[0])
                book = OrderBook.from_levels(levels(bids), levels(asks))
            book.apply(levels(delta.bids), levels(delta.asks))
            previous = delta
            cp = checkpoints[native].get(delta.last_seq)
            if cp is not None:
                compared += 1
                if book.is_crossed() or book != OrderBook.from_levels(cp["bids"], cp["asks"]):
                    mismatches.append((native, delta.last_seq))
    return compared, mismatches


# --- one case, start to finish -------------------------------------------------------------------

class FaultCase:
    """Everything one fault test runs; ``close()`` kills whatever is still alive."""

    def __init__(self, name: str, tmp_path: Path, bootstrap: str, sim_args: list[str], symbols: list[str],
                 ingest_args: list[str] = ()):
        self.name, self.symbols = name, symbols
        self.home = tmp_path / "home"
        self.env = perpflow_env(self.home, bootstrap)
        self.db_path = self.home / "warehouse.duckdb"
        self.sim = SimulatorProcess(tmp_path, ["--symbols", ",".join(symbols), *sim_args])
        self.ingest: IngestProcess | None = None
        self.ingest_args = list(ingest_args)
        self.cleanups: list[Callable[[], None]] = []

    def start(self) -> "FaultCase":
        self.sim.start()
        self.ingest = IngestProcess(self.env, self.sim, self.symbols, self.ingest_args).start()
        return self

    def load(self) -> str:
        code, output = run_loader(self.env)
        assert code == 0, output
        return output

    def finish(self, catch_up_timeout: float = 120) -> Account:
        """Run to the scenario's end, let ingest catch up, stop it, load, and account."""
        self.sim.wait_finished()
        truth_last = last_truth_ids(load_truth_file(self.sim.truth_path))

        def caught_up():
            if self.ingest.running and self.ingest.status().get("missing_trades", 0):
                return False
            self.load()
            got = loaded_last_ids(self.db_path)
            return all(got.get(s, -1) >= last for s, last in truth_last.items())
        try:
            wait_for(caught_up, "the warehouse to hold the last published trade of every symbol",
                     catch_up_timeout, 1.0)
        except AssertionError:
            pass    # whatever is missing now is what the account reports
        if self.ingest.running:
            self.ingest.stop()
        self.load()
        truth = load_truth_file(self.sim.truth_path)
        acc = account(self.name, self.db_path, truth, self.symbols)
        acc.ingest_exit_codes = self.ingest.exit_codes
        record_figures(acc)
        return acc

    def close(self) -> None:
        if self.ingest is not None and self.ingest.running:
            self.ingest.process.kill()
            self.ingest.process.wait()
        self.sim.stop()
        for cleanup in reversed(self.cleanups):
            cleanup()


def load_truth_file(path: Path) -> dict:
    from ingest.simulator import load_truth

    return load_truth(path)


FIGURES_ENV = "PERPFLOW_FAULT_FIGURES"


def record_figures(acc: Account) -> None:
    """Append this case's account to the file `python -m bench --only faults` collects (when it runs us)."""
    target = os.environ.get(FIGURES_ENV)
    if target:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
        with open(target, "a") as fh:
            fh.write(json.dumps({**asdict(acc), "test": test}, default=str) + "\n")


def assert_nothing_lost_silently(acc: Account, *, recoverable: bool = True) -> None:
    """The matrix's invariant; ``recoverable`` faults must also lose nothing with an event."""
    assert acc.expected > 0 and acc.in_duckdb > 0, acc
    assert acc.lost_silently == 0, f"{acc.lost_silently} trades lost with no feed event: {acc.silent_examples}"
    assert acc.duplicated == 0, f"{acc.duplicated} duplicated trades"
    assert acc.invented == 0, f"{acc.invented} trade ids the venue never published"
    assert not acc.book_mismatches, f"books differ from the truth at {acc.book_mismatches[:5]}"
    if recoverable:
        assert acc.lost_with_event == 0, f"{acc.lost_with_event} recoverable trades reported lost but not backfilled"


# --- the simulator script ------------------------------------------------------------------------

async def _serve_past_the_end(config, host, port, console) -> None:
    from ingest.simulator import Simulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(config, host, port) as sim:
        print(f"listening {sim.ws_url} {sim.http_url}", flush=True)
        finished = asyncio.create_task(sim.finished())
        while not stop.is_set():
            print(f"now {sim.feed.now_ms}", flush=True)
            if finished.done():
                finished.result()     # a failed market loop fails the case loudly
                print(FINISHED, flush=True)
                break
            await asyncio.sleep(0.5)
        await stop.wait()


async def run_until(service: IngestService, done: Callable[[], bool], at_most_s: float) -> None:
    """Run the service until ``done()`` holds (checked twice a second) or ``at_most_s`` have passed."""
    task = asyncio.create_task(service.run())
    started = time.monotonic()
    while not task.done():
        await asyncio.sleep(0.5)
        if done() or time.monotonic() - started >= at_most_s:
            service.request_stop()
    await task


async def run_for_market_time(service: IngestService, sim: SimulatorThread, market_s: float,
                              at_most_s: float = 600) -> None:
    """Run the service until the simulator has played ``market_s`` seconds of market time (a loaded
    machine plays them slower than the configured speed), but no longer than ``at_most_s``."""
    feed = sim.simulator.feed
    await run_until(service, lambda: feed.now_ms - feed.start_ms >= market_s * 1000, at_most_s)


async def run_until_received(service: IngestService, sim: SimulatorThread, market_s: float,
                             at_most_s: float = 600) -> None:
    """Run the service until it has received trades ``market_s`` seconds of market time into the
    simulation (its sink must keep ``records``): a loaded machine may leave the service far behind
    the simulator, and stopping on the simulator's clock would cut what the service had yet to read."""
    start_ms = sim.simulator.feed.start_ms

    def received_enough() -> bool:
        latest = next((r.ts_exchange for r in reversed(service.sink.records) if r.record_type == "trade"), start_ms)
        return latest - start_ms >= market_s * 1000

    await run_until(service, received_enough, at_most_s)


if __name__ == "__main__" and sys.argv[1:2] == ["simulate"]:
    from ingest.simulator import cli

    # The command's option parsing and validation stay the product's; only the serving loop differs.
    cli._serve = _serve_past_the_end
    cli.simulate(sys.argv[2:], prog_name="fault_harness simulate")

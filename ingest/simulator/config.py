"""Configuration of the exchange simulator: instruments, scenario window and fault injection.

Everything the simulator does is a pure function of this configuration (plus wall-clock pacing
in the server), so a config and its seed are enough to reproduce a message stream and its ground
truth exactly. Validation lives here so the CLI, the Python API and tests reject bad values with
the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import re
from datetime import datetime, timezone

SCENARIOS = ("calm", "cascade")
DEFAULT_STEP_MS = 100
STEP_CHOICES_MS = (100, 200, 250, 500, 1000)
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
DEFAULT_HOURS = {"calm": 6.0, "cascade": 12.0}
DEFAULT_START = {"calm": "2025-10-06T00:00:00Z", "cascade": "2025-10-10T12:00:00Z"}
# 15 calm minutes + 45 after the trigger: the crash, the squeeze, the end of the cascade window (34 min)
# and the recovery's first minutes (the scenario places its trigger for 60 minutes after it where it can)
MIN_CASCADE_HOURS = 1.0


class ConfigError(ValueError):
    """A configuration value is invalid; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class SymbolSpec:
    """Static description of one USD-M perpetual plus the calm-market calibration of its model.

    Tick/step sizes and precisions follow Binance's exchangeInfo; the market numbers (depth,
    open interest, flow) are order-of-magnitude Binance figures from early October 2025.
    """

    symbol: str
    base_asset: str
    price: float
    tick_size: str
    step_size: str
    price_precision: int
    quantity_precision: int
    annual_vol: float
    beta: float
    crash_beta: float
    depth2_usd: float
    touch_usd: float
    open_interest: float
    levered_long_share: float
    levered_short_share: float
    leverage_weights: tuple[tuple[int, float], ...]
    maint_margin_rate: float
    positions: int
    taker_rate: float
    taker_median_usd: float
    maker_order_usd: float
    funding_cap: float = 0.003
    funding_interval_hours: int = 8
    quote_asset: str = "USDT"

    @property
    def tick(self) -> float:
        return float(self.tick_size)

    @property
    def step(self) -> float:
        return float(self.step_size)


SYMBOL_SPECS: dict[str, SymbolSpec] = {
    "BTCUSDT": SymbolSpec(
        symbol="BTCUSDT", base_asset="BTC", price=121_550.0, tick_size="0.10", step_size="0.001",
        price_precision=2, quantity_precision=3, annual_vol=0.42, beta=1.0, crash_beta=1.2,
        depth2_usd=45e6, touch_usd=180e3, open_interest=70_000.0,
        levered_long_share=0.80, levered_short_share=0.45,
        leverage_weights=((2, 0.12), (3, 0.12), (5, 0.18), (10, 0.22), (20, 0.16), (25, 0.06),
                          (50, 0.07), (75, 0.03), (100, 0.04)),
        maint_margin_rate=0.004, positions=16_000, taker_rate=7.0, taker_median_usd=4_000.0,
        maker_order_usd=40_000.0,
    ),
    "ETHUSDT": SymbolSpec(
        symbol="ETHUSDT", base_asset="ETH", price=4_347.00, tick_size="0.01", step_size="0.001",
        price_precision=2, quantity_precision=3, annual_vol=0.58, beta=1.25, crash_beta=1.9,
        depth2_usd=18e6, touch_usd=70e3, open_interest=2_000_000.0,
        levered_long_share=0.75, levered_short_share=0.40,
        leverage_weights=((2, 0.16), (3, 0.16), (5, 0.22), (10, 0.20), (20, 0.12), (25, 0.05),
                          (50, 0.06), (75, 0.03)),
        maint_margin_rate=0.005, positions=14_000, taker_rate=6.0, taker_median_usd=3_000.0,
        maker_order_usd=20_000.0,
    ),
    "SOLUSDT": SymbolSpec(
        symbol="SOLUSDT", base_asset="SOL", price=221.660, tick_size="0.0010", step_size="1",
        price_precision=4, quantity_precision=0, annual_vol=0.78, beta=1.5, crash_beta=3.8,
        depth2_usd=5e6, touch_usd=20e3, open_interest=12_000_000.0,
        levered_long_share=0.62, levered_short_share=0.35,
        leverage_weights=((2, 0.22), (3, 0.22), (5, 0.22), (10, 0.16), (20, 0.09), (25, 0.04),
                          (50, 0.05)),
        maint_margin_rate=0.005, positions=10_000, taker_rate=4.0, taker_median_usd=2_000.0,
        maker_order_usd=8_000.0,
    ),
}

PUBLIC_STREAM_KINDS = ("depth", "depth@100ms", "depth@500ms", "bookTicker", "trade")
MARKET_STREAM_KINDS = ("aggTrade", "markPrice", "markPrice@1s", "forceOrder")
ALL_LIQUIDATIONS_STREAM = "!forceOrder@arr"
STREAM_KINDS = PUBLIC_STREAM_KINDS + MARKET_STREAM_KINDS
DROP_MODES = ("all", "one")
# Wire formats the server speaks on the one market (ingest.simulator.dialects); Binance USD-M is
# the feed's own and always served.
VENUES = ("binance-usdm", "binance-coinm", "okx-swap", "bybit-linear", "hyperliquid", "gmx-v2", "dydx-v4")


@dataclass(frozen=True)
class StallSpec:
    """One stream (``btcusdt@aggTrade``) or stream kind for every symbol (``markPrice@1s``)
    that goes silent for ``duration_s`` simulated seconds from ``start_s`` after the start."""

    stream: str
    start_s: float
    duration_s: float

    @classmethod
    def parse(cls, text: str) -> "StallSpec":
        parts = text.rsplit(":", 2)
        if len(parts) != 3:
            raise ConfigError(
                f"stall {text!r} must look like STREAM:START_S:DURATION_S, "
                "e.g. markPrice@1s:600:120 or btcusdt@aggTrade:60:30")
        stream, start, duration = parts
        try:
            start_s, duration_s = float(start), float(duration)
        except ValueError:
            raise ConfigError(f"stall {text!r}: START_S and DURATION_S must be numbers of "
                              "simulated seconds, e.g. markPrice@1s:600:120") from None
        spec = cls(stream, start_s, duration_s)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.stream not in STREAM_KINDS and self.stream != ALL_LIQUIDATIONS_STREAM:
            prefix, _, kind = self.stream.partition("@")
            if not prefix or prefix != prefix.lower() or kind not in STREAM_KINDS:
                raise ConfigError(
                    f"stall stream {self.stream!r} is not a simulated stream; use a stream kind "
                    f"({', '.join(STREAM_KINDS)}) to stall it for every symbol, one stream such as "
                    "btcusdt@aggTrade, or !forceOrder@arr")
        if self.start_s < 0 or self.duration_s <= 0:
            raise ConfigError(f"stall {self.stream}: START_S must be >= 0 and DURATION_S > 0 "
                              f"(got {self.start_s:g} and {self.duration_s:g})")

    def matches(self, stream: str) -> bool:
        if self.stream in STREAM_KINDS:
            return not stream.startswith("!") and stream.partition("@")[2] == self.stream
        return stream == self.stream


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
OUTAGE_SYNTAX = ("VENUE@START+DURATION, START a UTC time of day (20:45 or 20:45:30) or simulated time after the "
                 "start (600s, 10m), DURATION like 8m, 90s or 1h: e.g. okx-swap@20:45+8m")


def _seconds(text: str) -> float | None:
    match = _DURATION.match(text.strip())
    return float(match.group(1)) * _UNIT_S[match.group(2)] if match else None


@dataclass(frozen=True)
class OutageSpec:
    """One venue's feeds failing for a while, as OKX's and others' did on 2025-10-10: its
    websocket connections are closed and refused and its REST answers 503, for that venue only.
    ``time_of_day_s`` (seconds after 00:00 UTC, the first such time at or after the simulated
    start) or ``offset_s`` (simulated seconds after the start) says when it begins."""

    venue: str
    duration_s: float
    time_of_day_s: float | None = None
    offset_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> "OutageSpec":
        venue, at, rest = text.partition("@")
        start, plus, duration = rest.rpartition("+")
        if not at or not plus or not venue.strip() or not start.strip():
            raise ConfigError(f"outage {text!r} must look like {OUTAGE_SYNTAX}")
        duration_s = _seconds(duration)
        if duration_s is None:
            raise ConfigError(f"outage {text!r}: duration {duration!r} is not a length; use {OUTAGE_SYNTAX}")
        if ":" in start:
            parts = start.strip().split(":")
            if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
                raise ConfigError(f"outage {text!r}: start {start!r} is not HH:MM[:SS]; use {OUTAGE_SYNTAX}")
            h, m, sec = (int(p) for p in (*parts, "0")[:3])
            if h > 23 or m > 59 or sec > 59:
                raise ConfigError(f"outage {text!r}: start {start!r} is not a time of day (00:00 to 23:59:59)")
            spec = cls(venue.strip(), duration_s, time_of_day_s=h * 3600.0 + m * 60.0 + sec)
        else:
            offset = _seconds(start)
            if offset is None:
                raise ConfigError(f"outage {text!r}: start {start!r} is neither HH:MM nor a length; use {OUTAGE_SYNTAX}")
            spec = cls(venue.strip(), duration_s, offset_s=offset)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.venue not in VENUES:
            raise ConfigError(f"outage venue {self.venue!r} is not simulated; choose one of {', '.join(VENUES)}")
        if not self.duration_s > 0:
            raise ConfigError(f"outage of {self.venue}: duration must be > 0, got {self.duration_s:g} s")
        if (self.time_of_day_s is None) == (self.offset_s is None):
            raise ConfigError(f"outage of {self.venue}: give its start as a time of day or as an offset, not "
                              "both or neither")

    def window_ms(self, start_ms: int) -> tuple[int, int]:
        """[start, end) in epoch milliseconds for a simulation starting at ``start_ms``."""
        if self.offset_s is not None:
            begin = start_ms + int(round(self.offset_s * 1000))
        else:
            day_ms = 86_400_000
            begin = start_ms - start_ms % day_ms + int(round(self.time_of_day_s * 1000))
            if begin < start_ms:
                begin += day_ms
        return begin, begin + int(round(self.duration_s * 1000))

    def as_dict(self) -> dict:
        return {"venue": self.venue, "duration_s": self.duration_s, "time_of_day_s": self.time_of_day_s,
                "offset_s": self.offset_s}


@dataclass(frozen=True)
class FaultConfig:
    """Deterministic fault schedule. Periods are simulated seconds; 0 disables a fault.

    ``drop_mode``: ``all`` drops every connection at once; ``one`` drops only the longest-open
    connection, and the next drop waits until a connection with the victim's streams has been
    opened again (one connection down at a time: what redundant connections must survive). ``hostile_every_s`` alternates a text
    frame that is not UTF-8 and a valid frame of ``hostile_frame_bytes`` to every connection.

    dYdX's book integrity (the ``dydx-v4`` dialect, exchanges.md §2.5): ``fetch_loss_every_s``: the
    first order-book subscription after each period gets a snapshot taken ``fetch_loss_steps``
    market steps before its updates start (the indexer fetches the snapshot before registering
    the subscription), so that subscriber never sees those steps' updates; ``stale_level_every_s``:
    after each period one level the book deletes is never deleted for subscribers (the indexer's
    uncross task removes stale crossing levels without telling websocket clients);
    ``message_loss_every_s``: after each period the next ``v4_trades`` update sent on any connection
    is lost in transit, its ``message_id`` used up (a hole the client must notice and recover).

    ``outages``: venues whose feeds fail for a while (``OutageSpec``); meanwhile the market makers,
    who hedge across venues, withdraw: the model's disruption rises to at least
    ``outage_withdrawal`` (0..1) over ``OUTAGE_WITHDRAW_S`` and falls back over ``OUTAGE_RETURN_S``
    after the venue is back, thinning every venue's book (``ingest.simulator.scenario``)."""

    drop_every_s: float = 0.0
    gap_every_s: float = 0.0
    malformed_every_s: float = 0.0
    stalls: tuple[StallSpec, ...] = ()
    rest_error_rate: float = 0.0
    drop_mode: str = "all"
    hostile_every_s: float = 0.0
    hostile_frame_bytes: int = 50_000_000
    fetch_loss_every_s: float = 0.0
    fetch_loss_steps: int = 5
    stale_level_every_s: float = 0.0
    message_loss_every_s: float = 0.0
    outages: tuple[OutageSpec, ...] = ()
    outage_withdrawal: float = 0.6

    def validate(self) -> None:
        for name in ("drop_every_s", "gap_every_s", "malformed_every_s", "hostile_every_s", "fetch_loss_every_s",
                     "stale_level_every_s", "message_loss_every_s"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"{name} must be >= 0 simulated seconds (0 disables it), got {value:g}")
        if self.drop_mode not in DROP_MODES:
            raise ConfigError(f"drop mode {self.drop_mode!r} is not one of {', '.join(DROP_MODES)}")
        if not 1 <= self.fetch_loss_steps <= 600:
            raise ConfigError(f"fetch-loss steps must be 1..600 market steps of 100 ms, got {self.fetch_loss_steps}")
        if self.hostile_frame_bytes < 1024:
            raise ConfigError(f"hostile frame size must be >= 1024 bytes, got {self.hostile_frame_bytes}")
        if not 0.0 <= self.rest_error_rate < 1.0:
            raise ConfigError(f"rest-error-rate is a fraction of REST calls in [0, 1), "
                              f"got {self.rest_error_rate:g}; e.g. 0.05 fails 5% of calls")
        for stall in self.stalls:
            stall.validate()
        for outage in self.outages:
            outage.validate()
        if not 0.0 <= self.outage_withdrawal <= 1.0:
            raise ConfigError(f"outage withdrawal is the share of market-maker liquidity withdrawn during an "
                              f"outage, in [0, 1]; got {self.outage_withdrawal:g}")

    def as_dict(self) -> dict:
        return {
            "drop_every_s": self.drop_every_s,
            "gap_every_s": self.gap_every_s,
            "malformed_every_s": self.malformed_every_s,
            "stalls": [{"stream": s.stream, "start_s": s.start_s, "duration_s": s.duration_s}
                       for s in self.stalls],
            "rest_error_rate": self.rest_error_rate,
            "drop_mode": self.drop_mode,
            "hostile_every_s": self.hostile_every_s,
            "hostile_frame_bytes": self.hostile_frame_bytes,
            "fetch_loss_every_s": self.fetch_loss_every_s,
            "fetch_loss_steps": self.fetch_loss_steps,
            "stale_level_every_s": self.stale_level_every_s,
            "message_loss_every_s": self.message_loss_every_s,
            "outages": [o.as_dict() for o in self.outages],
            "outage_withdrawal": self.outage_withdrawal,
        }


def parse_time_ms(text: str) -> int:
    """Parse an ISO-8601 time (``2025-10-10T12:00:00Z``) or epoch milliseconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"start time {text!r} is not ISO-8601 (e.g. 2025-10-10T12:00:00Z) "
                          "or epoch milliseconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(round(parsed.timestamp() * 1000))


def format_time_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class SimConfig:
    """Full simulator configuration; ``resolved()`` fills scenario-dependent defaults."""

    scenario: str = "calm"
    seed: int = 7
    hours: float | None = None
    start_ms: int | None = None
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    speed: float = 1.0
    faults: FaultConfig = field(default_factory=FaultConfig)
    truth_path: str | None = None
    checkpoint_every_s: int = 60
    trigger_offset_s: float | None = None
    ws_ping_interval_s: float = 180.0
    ws_pong_timeout_s: float = 600.0
    ws_max_lifetime_s: float = 86_400.0
    rest_weight_limit: int = 2400
    venues: tuple[str, ...] = VENUES
    # The market model's time step. 100 ms is the live cadence (Binance's depth@100ms); a coarser
    # step keeps each second's dynamics (probabilities are per second) at a fraction of the cost,
    # for long calm histories that are only sampled once a minute.
    step_ms: int = DEFAULT_STEP_MS

    def resolved(self) -> "SimConfig":
        cfg = self
        if cfg.hours is None:
            cfg = replace(cfg, hours=DEFAULT_HOURS.get(cfg.scenario, 1.0))
        if cfg.start_ms is None:
            cfg = replace(cfg, start_ms=parse_time_ms(DEFAULT_START.get(cfg.scenario, DEFAULT_START["calm"])))
        cfg.validate()
        return cfg

    @property
    def duration_s(self) -> int:
        return int(round((self.hours or 0.0) * 3600))

    @property
    def end_ms(self) -> int:
        return int(self.start_ms) + self.duration_s * 1000

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        if not self.symbols:
            raise ConfigError("at least one symbol is required, e.g. BTCUSDT,ETHUSDT,SOLUSDT")
        for symbol in self.symbols:
            if symbol not in SYMBOL_SPECS:
                raise ConfigError(f"unsupported symbol {symbol!r}; supported symbols are "
                                  f"{', '.join(SYMBOL_SPECS)} (comma separated)")
        if len(set(self.symbols)) != len(self.symbols):
            raise ConfigError(f"symbols must be unique, got {','.join(self.symbols)}")
        if self.hours is not None:
            if not self.hours > 0:
                raise ConfigError(f"hours must be > 0, got {self.hours:g}")
            if self.hours * 3600 < 60:
                raise ConfigError(f"hours={self.hours:g} is shorter than one simulated minute; use >= 0.02")
            if self.scenario == "cascade" and self.hours < MIN_CASCADE_HOURS:
                raise ConfigError(f"the cascade scenario needs --hours >= {MIN_CASCADE_HOURS:g} (calm run-up, "
                                  f"crash and recovery); got {self.hours:g}")
        if self.start_ms is not None and self.start_ms % 1000:
            raise ConfigError("start time must fall on a whole second")
        if self.step_ms not in STEP_CHOICES_MS:
            raise ConfigError(f"step_ms must divide one second into whole steps of at least 100 ms: one of "
                              f"{', '.join(map(str, STEP_CHOICES_MS))}; got {self.step_ms}")
        if not self.speed > 0:
            raise ConfigError(f"speed must be > 0 simulated seconds per wall second, got {self.speed:g}")
        if self.checkpoint_every_s < 1:
            raise ConfigError(f"checkpoint_every_s must be >= 1, got {self.checkpoint_every_s}")
        if self.rest_weight_limit < 20:
            raise ConfigError(f"rest_weight_limit must be >= 20 (one depth limit=1000 call), "
                              f"got {self.rest_weight_limit}")
        if self.ws_ping_interval_s <= 0 or self.ws_pong_timeout_s <= 0 or self.ws_max_lifetime_s <= 0:
            raise ConfigError("websocket ping interval, pong timeout and max lifetime must be > 0")
        if self.trigger_offset_s is not None and self.hours is not None:
            if not 0 < self.trigger_offset_s <= self.hours * 3600 - 3600:
                raise ConfigError("trigger_offset_s must leave at least one simulated hour after the trigger")
        unknown = [v for v in self.venues if v not in VENUES]
        if unknown or not self.venues:
            raise ConfigError(f"unknown venue(s) {', '.join(unknown) or '(none given)'}; the simulator speaks "
                              f"{', '.join(VENUES)}")
        self.faults.validate()
        for outage in self.faults.outages:
            if outage.venue not in self.venues:
                raise ConfigError(f"outage of {outage.venue}: that venue is not served; add it to --venues "
                                  f"({','.join(self.venues)})")
            if self.start_ms is not None and self.hours is not None:
                begin, end = outage.window_ms(self.start_ms)
                if begin >= self.end_ms:
                    raise ConfigError(f"outage of {outage.venue} starts at {format_time_ms(begin)}, after the "
                                      f"simulation ends ({format_time_ms(self.end_ms)}); move it or add --hours")

    def as_dict(self) -> dict:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "hours": self.hours,
            "start_ms": self.start_ms,
            "start": format_time_ms(self.start_ms) if self.start_ms is not None else None,
            "symbols": list(self.symbols),
            "speed": self.speed,
            "faults": self.faults.as_dict(),
            "checkpoint_every_s": self.checkpoint_every_s,
            "trigger_offset_s": self.trigger_offset_s,
            "venues": list(self.venues),
        }

"""Scenario timelines: the exogenous forces acting on the market model.

The model's microstructure (market makers, takers, leveraged positions, liquidations) is the
same in every scenario; a scenario only says how the outside world pushes on it over time: news
drift of the spot index, volatility regime, disruption of the market makers' hedging venue,
aggression of takers and position-opening behaviour. The cascade itself is *not* scripted: the
liquidation feedback loop in the model turns the scripted shock into the crash, which is why
alts (thinner books, more leverage) fall further than their index beta alone implies.

The cascade timeline follows 2025-10-10 (times relative to the trigger, 20:50 UTC on the day):
a first news leg, market makers losing their hedging venue within minutes (books "appeared
empty"), the main crash peaking ~25 min after the trigger with a violent relief rally inside it,
then liquidity returning and a partial recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import SimConfig, SymbolSpec

MINUTE = 60.0

# Cascade phase boundaries, seconds after the trigger.
NEWS_END = 10 * MINUTE
DISRUPTION_RAMP = (2 * MINUTE, 6 * MINUTE)
DISRUPTION_RELEASE = (34 * MINUTE, 50 * MINUTE)
CRASH = (8 * MINUTE, 28 * MINUTE)
RECOVERY_START = 30 * MINUTE
CASCADE_WINDOW = (6 * MINUTE, 34 * MINUTE)
MIN_CALM = 15 * MINUTE          # calm run-up needed before the trigger ...
POST_TRIGGER = 60 * MINUTE      # ... and after it where the window allows: the crash and a partial recovery

# Exogenous legs of the BTC index, (start, end, log move), each a smoothstep over its window;
# alts scale them by SymbolSpec.crash_beta. The relief rally inside the crash is what squeezes
# the shorts opened into the fall, as the violent intra-crash bounces did on 2025-10-10.
INDEX_LEGS = (
    (0.0, NEWS_END, -0.015),
    (CRASH[0], 17 * MINUTE, -0.045),
    (17 * MINUTE, 19 * MINUTE, +0.020),
    (19 * MINUTE, CRASH[1], -0.035),
    (RECOVERY_START, 75 * MINUTE, +0.035),
)


@dataclass(frozen=True)
class Drivers:
    """Exogenous forces, evaluated once per simulated second."""

    drift: tuple[float, ...]    # per-symbol index drift, log-return per second
    vol_mult: float             # multiplier on diffusive volatility
    disruption: float           # 0..1, market makers' hedging venue disrupted
    taker_mult: float           # multiplier on taker order arrival rate
    buy_tilt: float             # added to the takers' buy probability
    open_mult: float            # multiplier on position openings
    long_tilt: float            # added to the long share of openings
    long_close_mult: float      # multiplier on voluntary closing hazard of longs
    high_leverage_share: float  # share of new positions taken with >= 20x leverage


def _quiet(n_symbols: int) -> Drivers:
    return Drivers(drift=(0.0,) * n_symbols, vol_mult=1.0, disruption=0.0, taker_mult=1.0, buy_tilt=0.0,
                   open_mult=1.0, long_tilt=0.0, long_close_mult=1.0, high_leverage_share=0.0)


def _ramp(t: float, a: float, b: float) -> float:
    if t <= a:
        return 0.0
    if t >= b:
        return 1.0
    return (t - a) / (b - a)


def _smoothstep_rate(t: float, a: float, b: float) -> float:
    """Derivative (per second) of a smoothstep going 0 -> 1 over [a, b]."""
    if t <= a or t >= b:
        return 0.0
    u = (t - a) / (b - a)
    return 6.0 * u * (1.0 - u) / (b - a)


class CalmScenario:
    """Hours of ordinary two-sided trading; no news, no disruption."""

    name = "calm"
    trigger_s = None

    def __init__(self, config: SimConfig, specs: list[SymbolSpec]):
        self._drivers = _quiet(len(specs))

    def drivers(self, t_s: float) -> Drivers:
        return self._drivers

    def cascade_windows(self) -> list[tuple[str, float, float]]:
        return []


class CascadeScenario:
    """Calm run-up, then news shock + market-maker hedging disruption, crash, partial recovery."""

    name = "cascade"

    def __init__(self, config: SimConfig, specs: list[SymbolSpec]):
        self._specs = specs
        self._crash_beta = tuple(s.crash_beta for s in specs)
        if config.trigger_offset_s is not None:
            self.trigger_s = float(config.trigger_offset_s)
        else:
            self.trigger_s = self.default_trigger_offset(config.duration_s)
        self._before_trigger = _quiet(len(specs))

    @staticmethod
    def default_trigger_offset(duration_s: float) -> float:
        """Put the trigger at 20:50 UTC for the default 12:00-24:00 window (190 min before the
        end) when that leaves at least an hour of calm; otherwise a third of the way in, keeping
        at least MIN_CALM before it and POST_TRIGGER after it for the crash and the recovery."""
        real_like = duration_s - 190 * MINUTE
        if real_like >= 60 * MINUTE:
            return real_like
        return max(MIN_CALM, min(duration_s / 3.0, duration_s - POST_TRIGGER))

    def cascade_windows(self) -> list[tuple[str, float, float]]:
        start, end = CASCADE_WINDOW
        return [(s.symbol, self.trigger_s + start, self.trigger_s + end) for s in self._specs]

    def drivers(self, t_s: float) -> Drivers:
        t = t_s - self.trigger_s
        if t < 0:
            return self._before_trigger
        btc_drift = sum(move * _smoothstep_rate(t, start, end) for start, end, move in INDEX_LEGS)
        disruption = _ramp(t, *DISRUPTION_RAMP) * (1.0 - _ramp(t, *DISRUPTION_RELEASE))
        crashing = _ramp(t, CRASH[0] - 2 * MINUTE, CRASH[0]) * (1.0 - _ramp(t, CRASH[1], CRASH[1] + 4 * MINUTE))
        recovering = _ramp(t, RECOVERY_START, RECOVERY_START + 5 * MINUTE) * (1.0 - _ramp(t, 90 * MINUTE, 120 * MINUTE))
        excitement = _ramp(t, 0.0, CRASH[0]) * (1.0 - 0.7 * _ramp(t, DISRUPTION_RELEASE[0], 120 * MINUTE))
        return Drivers(
            drift=tuple(btc_drift * beta for beta in self._crash_beta),
            vol_mult=1.0 + 2.5 * excitement,
            disruption=disruption,
            taker_mult=1.0 + 3.0 * excitement,
            buy_tilt=-0.10 * crashing + 0.05 * recovering,
            open_mult=1.0 + 4.5 * crashing + 1.0 * recovering,
            long_tilt=-0.50 * crashing + 0.20 * recovering,
            long_close_mult=1.0 + 10.0 * crashing,
            high_leverage_share=1.0 * crashing,
        )


OUTAGE_WITHDRAW_S = 60.0      # market makers pull quotes within a minute of a venue failing ...
OUTAGE_RETURN_S = 120.0       # ... and come back over two once it answers again


class OutageWithdrawal:
    """A scenario with venue outages on top: while a venue is down, market makers who hedge on
    it withdraw from the others (2025-10-10), so the disruption driver (books thinner, quotes
    further out: ``MarketModel``) rises to at least ``level``, ramping in over
    ``OUTAGE_WITHDRAW_S`` and out over ``OUTAGE_RETURN_S`` after the venue is back."""

    def __init__(self, inner: CalmScenario | CascadeScenario, windows_s: list[tuple[float, float]], level: float):
        self._inner = inner
        self.name = inner.name
        self.trigger_s = inner.trigger_s
        self.windows_s = windows_s
        self.level = level

    def cascade_windows(self) -> list[tuple[str, float, float]]:
        return self._inner.cascade_windows()

    def withdrawal(self, t_s: float) -> float:
        return self.level * max((_ramp(t_s, start, start + OUTAGE_WITHDRAW_S)
                                 * (1.0 - _ramp(t_s, end, end + OUTAGE_RETURN_S))
                                 for start, end in self.windows_s), default=0.0)

    def drivers(self, t_s: float) -> Drivers:
        drv = self._inner.drivers(t_s)
        withdrawn = self.withdrawal(t_s)
        return replace(drv, disruption=withdrawn) if withdrawn > drv.disruption else drv


def build_scenario(config: SimConfig, specs: list[SymbolSpec]) -> CalmScenario | CascadeScenario | OutageWithdrawal:
    scenario = CascadeScenario(config, specs) if config.scenario == "cascade" else CalmScenario(config, specs)
    if not config.faults.outages:
        return scenario
    windows = [tuple((t - config.start_ms) / 1000.0 for t in o.window_ms(config.start_ms))
               for o in config.faults.outages]
    return OutageWithdrawal(scenario, windows, config.faults.outage_withdrawal)

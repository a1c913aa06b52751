"""Trend-following trading signals (analytics.md §5) and their honest evaluation.

Five votes, each −1/+1 (the Donchian state is 0 until its first breakout):
SuperTrend(10, 3) direction, EMA20 > EMA50, close > SMA200, Donchian(20/10) breakout state and the
MACD(12, 26, 9) histogram sign. score = Σ votes / 5.

The position state needs SuperTrend *and* the majority to agree before it flips (score ≥ 0.2 with
an up SuperTrend, ≤ −0.2 with a down one) and otherwise keeps the previous state; this hysteresis
is what keeps a trend follower from churning in ranges. Token Metrics semantics: ``trading_signal``
is the event (±1 on the flip bar, else 0), ``token_trend`` the state.

Timing: everything at bar t uses bars ≤ t only (signals are computed at bar close), and the
position decided at close t earns the return of bar t+1, the "act on the next bar" convention:
TRADING_SIGNALS_RETURNS_t = Π_{u≤t}(1 + position_{u−1}·r_u) − 1. Every indicator is a causal
recursion or a window over past bars, so appending or changing later bars never changes an
earlier value (the tests check this property on random walks).

Warm-up: until every vote is defined (SMA200 needs 200 bars) the state is 0 and no signal fires.
Strategy and holding returns are both measured from the first warmed-up bar, so they cover the
same span. Recursive indicators are seeded like TradingView (SMA of the first ``period`` values),
so early values differ from pandas' ``ewm(adjust=False)``; after a few periods they converge.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from transforms.quantmetrics import metrics_from_returns

DAILY_HORIZONS = (1, 3, 7)
HOURLY_HORIZONS = (4, 24)
VOTE_NAMES = ("supertrend", "ema_cross", "sma_regime", "donchian", "macd")


@dataclass(frozen=True)
class SignalParams:
    supertrend_period: int = 10
    supertrend_factor: float = 3.0
    ema_fast: int = 20
    ema_slow: int = 50
    regime_sma: int = 200
    donchian_entry: int = 20
    donchian_exit: int = 10
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    # Net votes needed to (re)enter a side: 1 of 5 is score ≥ 0.2 in analytics.md terms.
    min_net_votes: int = 1


@dataclass(frozen=True)
class Signals:
    """Per-bar signal columns, all of the input length.

    votes: name (see :data:`VOTE_NAMES`) -> float array of −1/0/+1, NaN during that vote's warm-up.
    supertrend: the SuperTrend line (lower band in an uptrend, upper band in a downtrend).
    score: Σ votes / 5, NaN until every vote is defined (``warmed_up``).
    token_trend: int8 state −1/0/+1; trading_signal: int8 event, token_trend_t if it differs from
    token_trend_{t−1} else 0 (the first entry after warm-up is an event too).
    confidence: fraction of the five votes agreeing with token_trend (0 while it is 0).
    position: the exposure held over the *next* bar: token_trend, or max(token_trend, 0) long-only.
    trading_signals_returns / holding_returns: cumulative fractions since the first warmed-up bar
    (0 before it).
    """

    votes: dict[str, np.ndarray]
    supertrend: np.ndarray
    score: np.ndarray
    warmed_up: np.ndarray
    token_trend: np.ndarray
    trading_signal: np.ndarray
    confidence: np.ndarray
    position: np.ndarray
    trading_signals_returns: np.ndarray
    holding_returns: np.ndarray

    def as_columns(self) -> dict[str, np.ndarray]:
        """Flat name -> array mapping for a table: votes become ``vote_<name>`` columns."""
        columns = {f"vote_{name}": values for name, values in self.votes.items()}
        for name in self.__dataclass_fields__:
            if name != "votes":
                columns[name] = getattr(self, name)
        return columns


@dataclass(frozen=True)
class HitRate:
    """Share of flip events whose forward return over ``horizon`` bars has the signal's sign."""

    horizon: int
    n: int
    hits: int
    rate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class TradeStats:
    """Flip-to-flip trades of the held position (compounded bar by bar, like the strategy curve).

    win_rate and its Wilson interval cover closed trades; the still-open trade is reported
    separately (``open_return``, NaN if flat at the end) because its outcome is not known yet.
    profit_factor = Σ winning trade returns / |Σ losing trade returns| (NaN without losers).
    """

    n_closed: int
    wins: int
    win_rate: float
    ci_low: float
    ci_high: float
    profit_factor: float
    mean_return: float
    open_return: float


@dataclass(frozen=True)
class SignalEvaluation:
    """Hit rates per horizon, trade statistics, and strategy vs buy-and-hold over the live span.

    ``strategy`` / ``holding``: {"total_return", "sharpe", "max_drawdown", "volatility"} computed by
    :func:`transforms.quantmetrics.metrics_from_returns` on per-bar returns after warm-up.
    """

    n_bars: int
    n_signals: int
    hit_rates: tuple[HitRate, ...]
    trades: TradeStats
    strategy: dict[str, float]
    holding: dict[str, float]


def sma(values: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average over the last ``period`` values; NaN until the window is full."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    if values.size >= period:
        out[period - 1 :] = np.lib.stride_tricks.sliding_window_view(values, period).mean(axis=1)
    return out


def ema(values: np.ndarray, period: int) -> np.ndarray:
    """Exponential moving average, alpha = 2/(period+1), seeded with an SMA (TradingView ta.ema)."""
    return _seeded_recursion(values, 2.0 / (period + 1), period)


def wilder_rma(values: np.ndarray, period: int) -> np.ndarray:
    """Wilder's running moving average, alpha = 1/period, seeded with an SMA (TradingView ta.rma)."""
    return _seeded_recursion(values, 1.0 / period, period)


def _seeded_recursion(values: np.ndarray, alpha: float, period: int) -> np.ndarray:
    """x_t = alpha·v_t + (1−alpha)·x_{t−1} from the SMA of the first ``period`` values after any
    leading NaNs (a MACD signal line starts where the MACD line does)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(values))
    if defined.size == 0:
        return out
    start = defined[0]
    if np.isnan(values[start:]).any():
        raise ValueError("moving averages need a gap-free series after the first value")
    seed = start + period - 1
    if seed >= values.size:
        return out
    level = values[start : seed + 1].mean()
    out[seed] = level
    for t in range(seed + 1, values.size):
        level = alpha * values[t] + (1.0 - alpha) * level
        out[t] = level
    return out


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(H−L, |H−C_prev|, |L−C_prev|); the first bar, with no previous close, uses H−L."""
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    previous = np.r_[np.nan, close[:-1]]
    gaps = np.fmax(np.abs(high - previous), np.abs(low - previous))
    return np.fmax(high - low, gaps)


def atr_wilder(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Average true range, Wilder smoothing (TradingView ta.atr); NaN for the first period−1 bars."""
    return wilder_rma(true_range(high, low, close), period)


def supertrend(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 10, factor: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """SuperTrend (line, direction) with bands hl2 ± factor·ATR(Wilder).

    Direction turns +1 when the close crosses above the previous upper band and −1 below the
    previous lower band; while it holds, the lower band only rises (uptrend) and the upper band
    only falls (downtrend), the pandas-ta formulation. Direction starts at +1 on the first bar with
    an ATR; both outputs are NaN before that.
    """
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    atr = atr_wilder(high, low, close, period)
    mid = (high + low) / 2
    upper = mid + factor * atr
    lower = mid - factor * atr
    direction = np.full(close.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(atr))
    if defined.size == 0:
        return np.full(close.shape, np.nan), direction
    start = defined[0]
    direction[start] = 1.0
    for t in range(start + 1, close.size):
        if close[t] > upper[t - 1]:
            direction[t] = 1.0
        elif close[t] < lower[t - 1]:
            direction[t] = -1.0
        else:
            direction[t] = direction[t - 1]
            if direction[t] > 0 and lower[t] < lower[t - 1]:
                lower[t] = lower[t - 1]
            if direction[t] < 0 and upper[t] > upper[t - 1]:
                upper[t] = upper[t - 1]
    return np.where(direction > 0, lower, upper), direction


def donchian_state(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, entry_bars: int = 20, exit_bars: int = 10
) -> np.ndarray:
    """Turtle-style breakout state: +1 after a close above the prior ``entry_bars`` high, −1 after
    a close below the prior ``exit_bars`` low, otherwise unchanged; 0 before the first breakout and
    NaN until ``entry_bars`` prior bars exist. Closes, not intrabar extremes, trigger it because the
    signal is evaluated at bar close."""
    if not 1 <= exit_bars <= entry_bars:
        raise ValueError(f"need 1 <= exit_bars <= entry_bars, got {exit_bars} and {entry_bars}")
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    n = close.size
    state = np.full(n, np.nan)
    if n <= entry_bars:
        return state
    # Row j of each window view ends at bar j + width − 1; keep the windows ending at t − 1.
    prior_high = np.lib.stride_tricks.sliding_window_view(high, entry_bars).max(axis=1)[:-1]
    prior_low = np.lib.stride_tricks.sliding_window_view(low, exit_bars).min(axis=1)[entry_bars - exit_bars : -1]
    bars = slice(entry_bars, n)
    events = np.where(close[bars] > prior_high, 1.0, np.where(close[bars] < prior_low, -1.0, 0.0))
    last_event = np.maximum.accumulate(np.where(events != 0, np.arange(events.size), -1))
    state[bars] = np.where(last_event >= 0, events[np.maximum(last_event, 0)], 0.0)
    return state


def macd_histogram(close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9) -> np.ndarray:
    """MACD line (EMA fast − EMA slow) minus its EMA(signal); NaN until both are defined."""
    line = ema(close, fast) - ema(close, slow)
    return line - ema(line, signal)


def compute_signals(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    params: SignalParams = SignalParams(),
    *,
    long_only: bool = False,
) -> Signals:
    """Votes, score, hysteresis state, events and cumulative returns for closed bars (oldest first).

    The same code serves daily and hourly bars; only the caller's bar size differs (SMA200 is 200
    hours on hourly bars, as analytics.md specifies).
    """
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    if not (high.shape == low.shape == close.shape and close.ndim == 1 and close.size > 0):
        raise ValueError("high, low and close must be non-empty 1-D arrays of equal length")
    line, direction = supertrend(high, low, close, params.supertrend_period, params.supertrend_factor)

    def vote(condition: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
        undefined = np.logical_or.reduce([np.isnan(x) for x in inputs])
        return np.where(undefined, np.nan, np.where(condition, 1.0, -1.0))

    with np.errstate(invalid="ignore"):
        fast, slow, regime = ema(close, params.ema_fast), ema(close, params.ema_slow), sma(close, params.regime_sma)
        histogram = macd_histogram(close, params.macd_fast, params.macd_slow, params.macd_signal)
        votes = {
            "supertrend": direction,
            # A tie votes bearish; exact float ties practically never happen.
            "ema_cross": vote(fast > slow, fast, slow),
            "sma_regime": vote(close > regime, regime),
            "donchian": donchian_state(high, low, close, params.donchian_entry, params.donchian_exit),
            "macd": vote(histogram > 0, histogram),
        }
    stacked = np.vstack([votes[name] for name in VOTE_NAMES])
    warmed_up = ~np.isnan(stacked).any(axis=0)
    net_votes = np.where(warmed_up, np.nansum(stacked, axis=0), 0.0)

    trend = np.zeros(close.size, dtype=np.int8)
    state = 0
    for t in np.flatnonzero(warmed_up):
        if direction[t] > 0 and net_votes[t] >= params.min_net_votes:
            state = 1
        elif direction[t] < 0 and net_votes[t] <= -params.min_net_votes:
            state = -1
        trend[t] = state
    previous = np.r_[np.int8(0), trend[:-1]]
    signal = np.where(trend != previous, trend, 0).astype(np.int8)
    agreeing = (stacked == trend.astype(np.float64)).sum(axis=0)
    confidence = np.where(trend != 0, agreeing / len(VOTE_NAMES), 0.0)
    position = np.maximum(trend, 0).astype(np.int8) if long_only else trend

    strategy_bar, holding_bar = _live_bar_returns(close, position, warmed_up)
    return Signals(
        votes=votes,
        supertrend=line,
        score=np.where(warmed_up, net_votes / len(VOTE_NAMES), np.nan),
        warmed_up=warmed_up,
        token_trend=trend,
        trading_signal=signal,
        confidence=confidence,
        position=position,
        trading_signals_returns=np.cumprod(1.0 + strategy_bar) - 1.0,
        holding_returns=np.cumprod(1.0 + holding_bar) - 1.0,
    )


def _first_live_bar(warmed_up: np.ndarray) -> int:
    """First bar that earns a return: the one after the first bar with every vote defined."""
    return int(np.argmax(warmed_up)) + 1 if warmed_up.any() else warmed_up.size


def _live_bar_returns(close: np.ndarray, position: np.ndarray, warmed_up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar strategy and holding returns, zero before :func:`_first_live_bar`."""
    bar_return = np.r_[0.0, close[1:] / close[:-1] - 1.0]
    live = np.arange(close.size) >= _first_live_bar(warmed_up)
    held = np.r_[0, position[:-1]]
    return np.where(live, held * bar_return, 0.0), np.where(live, bar_return, 0.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) without trials.

    Preferred over the normal approximation because flip events are few (tens per year) and hit
    rates can sit near 0 or 1, where the Wald interval leaves [0, 1] or collapses to a point.
    """
    if trials == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half_width = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return float(max(centre - half_width, 0.0)), float(min(centre + half_width, 1.0))


def evaluate_signals(
    close: np.ndarray,
    signals: Signals,
    *,
    horizons: tuple[int, ...] = DAILY_HORIZONS,
    periods_per_year: float = 365,
    confidence: float = 0.95,
) -> SignalEvaluation:
    """Score the signals against what the market did next.

    Hit rate at horizon h: over flip events t with t+h inside the series, the share with
    sign(C_{t+h}/C_t − 1) equal to the signal (a flat forward return is a miss). Horizons are in
    bars: use :data:`DAILY_HORIZONS` (1, 3, 7) for daily bars, :data:`HOURLY_HORIZONS` (4, 24) and
    periods_per_year=8760 for hourly bars.
    """
    close = np.asarray(close, dtype=np.float64)
    events = np.flatnonzero(signals.trading_signal != 0)
    hit_rates = []
    for horizon in horizons:
        scored = events[events + horizon < close.size]
        forward = close[scored + horizon] / close[scored] - 1.0
        hits = int((np.sign(forward) == signals.trading_signal[scored]).sum())
        low, high = wilson_interval(hits, scored.size, confidence)
        rate = hits / scored.size if scored.size else float("nan")
        hit_rates.append(HitRate(horizon, int(scored.size), hits, rate, low, high))

    strategy_bar, holding_bar = _live_bar_returns(close, signals.position, signals.warmed_up)
    live = slice(_first_live_bar(signals.warmed_up), None)
    return SignalEvaluation(
        n_bars=int(close.size),
        n_signals=int(events.size),
        hit_rates=tuple(hit_rates),
        trades=_trade_stats(signals.position, strategy_bar, confidence),
        strategy=_summary(strategy_bar[live], periods_per_year),
        holding=_summary(holding_bar[live], periods_per_year),
    )


def _trade_stats(position: np.ndarray, strategy_bar: np.ndarray, confidence: float) -> TradeStats:
    wealth = np.cumprod(1.0 + strategy_bar)
    changes = np.flatnonzero(np.diff(position.astype(np.int64))) + 1
    entries = changes[position[changes] != 0]
    exits = np.r_[changes, position.size - 1][np.searchsorted(changes, entries, side="right")]
    closed = position[exits] != position[entries]
    returns = wealth[exits] / wealth[entries] - 1.0
    done = returns[closed]
    wins = int((done > 0).sum())
    low, high = wilson_interval(wins, done.size, confidence)
    gains, losses = done[done > 0].sum(), -done[done < 0].sum()
    return TradeStats(
        n_closed=int(done.size),
        wins=wins,
        win_rate=wins / done.size if done.size else float("nan"),
        ci_low=low,
        ci_high=high,
        profit_factor=float(gains / losses) if losses > 0 else float("nan"),
        mean_return=float(done.mean()) if done.size else float("nan"),
        open_return=float(returns[~closed][0]) if (~closed).any() else float("nan"),
    )


def _summary(bar_returns: np.ndarray, periods_per_year: float) -> dict[str, float]:
    metrics = metrics_from_returns(bar_returns, periods_per_year)
    return {key: metrics[key] for key in ("total_return", "sharpe", "max_drawdown", "volatility")}

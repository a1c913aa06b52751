"""Risk/return statistics of a return series, exactly as specified in analytics.md §2.3.

The reference libraries disagree (analytics.md §2 lists how), so every convention is pinned here
and checked against their golden vectors:
  * returns are simple per-period returns, never prices (quantstats guesses "prices" from the
    value range; we never guess); NaNs are dropped *before* counting, so N is the number of valid
    returns (empyrical counts NaNs in its CAGR; quantstats does not; we follow quantstats);
  * annualization A is explicit: 365 for daily crypto, 8760 for hourly, 12 for monthly; the
    libraries' 252 default understates crypto Sharpe/vol by ~20%;
  * risk-free rate and Sortino's minimum acceptable return are 0; Sortino's downside deviation
    divides by the full-sample N (all three libraries agree);
  * the Omega threshold is 0, so ``omega`` equals quantstats' period-based profit factor;
  * ``var_95`` is the historical 5% quantile (numpy linear interpolation) and ``cvar_95`` the mean
    of the lowest ⌊(N−1)·0.05⌋+1 returns (empyrical); quantstats' parametric VaR is not used;
  * skew/kurtosis are pandas' bias-adjusted G1 and excess G2; a numerically constant series
    gets 0 for both (pandas does the same), not the noise of a 0/0;
  * CAGR is period-count based, (Π(1+r))^(A/N) − 1; ffn's calendar-time CAGR differs slightly;
  * drawdowns are geometric and the starting capital of 1 counts as a peak.
A ratio whose denominator is zero (no spread, no losses, no drawdown) is NaN rather than ±inf, so
it lands in the warehouse as NULL instead of poisoning averages.

One vectorized core (`_metrics_by_row`) serves both the single-series entry point and the rolling
windows, so the golden tests pin the numbers the warehouse stores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transforms.candles import as_utc_ms

METRIC_KEYS = (
    "sharpe",
    "sortino",
    "volatility",
    "max_drawdown",
    "cagr",
    "calmar",
    "omega",
    "var_95",
    "cvar_95",
    "skew",
    "kurtosis",
    "best",
    "worst",
    "total_return",
    "tail_ratio",
    "risk_reward_ratio",
    "mean_return",
    "std_return",
)
WINDOWS: tuple[int | None, ...] = (30, 90, 365, None)
MIN_COVERAGE = 0.9
TAIL_QUANTILE = 0.05
# Population std at or below this fraction of the largest |return| is float noise around a
# constant series; higher moments and spread-based ratios are then undefined.
DEGENERATE_SPREAD = 1e-12


def metrics_from_returns(returns: Sequence[float] | np.ndarray, periods_per_year: float = 365) -> dict[str, float]:
    """All metrics of one return series, keyed by :data:`METRIC_KEYS` plus ``n`` (valid count).

    Values are Python floats (NaN when undefined: fewer than 2 returns for spread-based metrics,
    3 for skew, 4 for kurtosis, or a zero denominator); ``n`` is an int.
    """
    row = np.asarray(returns, dtype=np.float64).reshape(1, -1)
    columns = _metrics_by_row(row, periods_per_year)
    result = {key: float(columns[key][0]) for key in METRIC_KEYS}
    result["n"] = int(columns["n"][0])
    return result


def omega_ratio(
    returns: Sequence[float] | np.ndarray, required_return: float = 0.0, periods_per_year: float = 365
) -> float:
    """Omega at an *annual* required return, de-annualized as (1+L)^(1/A) − 1 (empyrical/quantstats).

    ``metrics_from_returns`` fixes L = 0; this exists for callers that want a hurdle rate.
    """
    if required_return <= -1:
        return float("nan")
    threshold = (1 + required_return) ** (1 / periods_per_year) - 1
    values = np.asarray(returns, dtype=np.float64)
    excess = values[~np.isnan(values)] - threshold
    return float(_omega(excess.reshape(1, -1))[0])


def best_worst_month(dates: Sequence | np.ndarray, returns: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Best and worst calendar-month (UTC) compounded return of a dated return series.

    A month present only through NaN returns is skipped; months at the ends of the series count
    with whatever part of them is present (as quantstats' ``best(aggregate='M')``).
    Returns (nan, nan) when there is no valid return.
    """
    months = as_utc_ms(dates).astype("datetime64[M]")
    values = np.asarray(returns, dtype=np.float64)
    valid = ~np.isnan(values)
    if not valid.any():
        return float("nan"), float("nan")
    _, month_index = np.unique(months[valid], return_inverse=True)
    monthly = np.expm1(np.bincount(month_index, weights=np.log1p(values[valid])))
    return float(monthly.max()), float(monthly.min())


def windowed_metrics(
    dates: Sequence | np.ndarray,
    closes: Sequence[float] | np.ndarray,
    *,
    windows: Sequence[int | None] = WINDOWS,
    as_of: Sequence | np.ndarray | None = None,
    periods_per_year: float = 365,
    min_coverage: float = MIN_COVERAGE,
    block_rows: int = 256,
) -> dict[str, np.ndarray]:
    """Trailing-window metrics of a daily close series for every as-of day and window.

    ``dates`` are the UTC days of the closes (00:00 UTC candles), strictly increasing; missing days
    are allowed and simply leave their return missing (a return always spans exactly one day, so a
    gap is never folded into a multi-day "daily" return). The return of day d is
    close_d / close_{d−1} − 1. Window ``w`` (days) holds the returns of the ``w`` days ending at the
    as-of day inclusive; ``None`` means all returns since the first close. A row is NULL (NaN in
    every metric column) when fewer than ``min_coverage``·window-days returns are valid.

    ``as_of`` restricts the output to those days (each must be in ``dates``), e.g. one daily
    partition; default: every day in ``dates``.

    Returns columns of equal length, one row per (window, as-of day), grouped by window in the
    order given, then by as-of day:
      ``as_of`` datetime64[D]; ``window`` str ("30d", "90d", "365d", "all");
      ``window_days`` int (for "all": days since the first close); ``n_returns`` int (valid returns
      in the window); ``coverage`` float = n_returns / window_days;
      ``cagr_short_window`` bool, True when window_days < 365, i.e. CAGR annualizes less than a year
      and is mostly noise (30 days of +0.5%/day is +500% "CAGR");
      every key of :data:`METRIC_KEYS` (float, NaN = NULL); ``best_month``/``worst_month`` (float,
      calendar-month compounded within the window; partial edge months count as they are).
    """
    days = as_utc_ms(dates).astype("datetime64[D]").astype(np.int64)
    prices = np.asarray(closes, dtype=np.float64)
    if days.shape != prices.shape or days.ndim != 1 or days.size == 0:
        raise ValueError("dates and closes must be non-empty 1-D sequences of equal length")
    if np.any(np.diff(days) <= 0):
        raise ValueError("dates must be strictly increasing days (one close per UTC day)")
    if np.any(prices[~np.isnan(prices)] <= 0):
        raise ValueError("closes must be positive (NaN marks a missing close)")
    if any(window is not None and window <= 0 for window in windows):
        raise ValueError(f"windows must be positive day counts or None, got {list(windows)}")

    calendar_close = np.full(days[-1] - days[0] + 1, np.nan)
    calendar_close[days - days[0]] = prices
    daily_returns = np.r_[np.nan, calendar_close[1:] / calendar_close[:-1] - 1]
    if as_of is None:
        target = days - days[0]
    else:
        target = as_utc_ms(as_of).astype("datetime64[D]").astype(np.int64) - days[0]
        if np.any(~np.isin(target, days - days[0])):
            raise ValueError("every as_of day must be one of the dates")
    months = _MonthIndex(days[0], daily_returns)

    parts = [
        _window_rows(daily_returns, months, target, window, periods_per_year, min_coverage, block_rows)
        for window in windows
    ]
    columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    columns["as_of"] = (columns["as_of"] + days[0]).astype("datetime64[D]")
    return columns


def _window_rows(
    daily_returns: np.ndarray,
    months: _MonthIndex,
    target: np.ndarray,
    window: int | None,
    periods_per_year: float,
    min_coverage: float,
    block_rows: int,
) -> dict[str, np.ndarray]:
    # Returns start at calendar index 1 (the first close has none), so "all" spans target days.
    window_days = target.copy() if window is None else np.full(target.shape, window)
    first = np.minimum(np.maximum(target - window_days + 1, 1), target)
    width = int(window_days.max(initial=1))
    # Left-pad with NaN so every window is a fixed-width slice; NaN is neutral in every metric.
    padded = np.r_[np.full(width, np.nan), daily_returns]
    blocks = []
    for start in range(0, target.size, block_rows):
        ends = target[start : start + block_rows]
        span = max(int(window_days[start : start + block_rows].max(initial=1)), 1)
        # An "all" block is as wide as its longest history; shorter rows see only NaN padding
        # (or the return-less first day) in the extra columns.
        rows = np.lib.stride_tricks.sliding_window_view(padded, span)[ends + width - span + 1]
        blocks.append(_metrics_by_row(rows, periods_per_year))
    metrics = {key: np.concatenate([block[key] for block in blocks]) for key in blocks[0]}
    best_month, worst_month = months.best_worst(first, target)
    metrics["best_month"], metrics["worst_month"] = best_month, worst_month

    n_returns = metrics.pop("n").astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        coverage = np.where(window_days > 0, n_returns / window_days, 0.0)
    # "Under 90 % covered" is strict: 27 of 30 days counts, although 0.9 * 30 is 27.000000000000004.
    insufficient = (window_days == 0) | (n_returns < np.ceil(min_coverage * window_days - 1e-9))
    for values in metrics.values():
        values[insufficient] = np.nan
    return {
        "as_of": target,
        "window": np.full(target.shape, "all" if window is None else f"{window}d"),
        "window_days": window_days.astype(np.int64),
        "n_returns": n_returns,
        "coverage": coverage,
        "cagr_short_window": window_days < 365,
        **metrics,
    }


class _MonthIndex:
    """Calendar-month compounding over arbitrary day ranges via prefix sums of log growth.

    Only the two edge months of a window are partial; prefix sums make every month's (partial)
    return an O(1) difference, so best/worst month for thousands of windows is a few array ops.
    """

    def __init__(self, first_day: int, daily_returns: np.ndarray) -> None:
        valid = ~np.isnan(daily_returns)
        self.log_growth = np.r_[0.0, np.cumsum(np.log1p(np.where(valid, daily_returns, 0.0)))]
        self.valid_count = np.r_[0, np.cumsum(valid)]
        month_of_day = (np.arange(daily_returns.size) + first_day).astype("datetime64[D]").astype("datetime64[M]")
        self.month = (month_of_day - month_of_day[0]).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, np.diff(self.month) != 0])
        self.month_first = starts
        self.month_last = np.r_[starts[1:], daily_returns.size] - 1

    def best_worst(self, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best/worst month within calendar-day ranges [first, last] (inclusive), row-wise."""
        first_month, last_month = self.month[first], self.month[last]
        offsets = np.arange(int((last_month - first_month).max(initial=0)) + 1)
        month = first_month[:, None] + offsets
        inside = month <= last_month[:, None]
        month = np.minimum(month, last_month[:, None])
        lo = np.maximum(self.month_first[month], first[:, None])
        hi = np.minimum(self.month_last[month], last[:, None]) + 1
        present = inside & (self.valid_count[hi] > self.valid_count[lo])
        monthly = np.where(present, np.expm1(self.log_growth[hi] - self.log_growth[lo]), np.nan)
        has_any = present.any(axis=1)
        best = np.full(first.shape, np.nan)
        worst = np.full(first.shape, np.nan)
        best[has_any] = np.nanmax(monthly[has_any], axis=1)
        worst[has_any] = np.nanmin(monthly[has_any], axis=1)
        return best, worst


def _metrics_by_row(returns: np.ndarray, periods_per_year: float) -> dict[str, np.ndarray]:
    """Every metric for each row of a 2-D array of returns (NaN = missing), vectorized across rows."""
    if returns.shape[1] == 0:
        returns = np.full((returns.shape[0], 1), np.nan)
    valid = ~np.isnan(returns)
    n = valid.sum(axis=1)
    filled = np.where(valid, returns, 0.0)
    annual_root = np.sqrt(periods_per_year)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mean = filled.sum(axis=1) / n
        deviation = np.where(valid, returns - mean[:, None], 0.0)
        squares = deviation**2
        sum_sq = squares.sum(axis=1)
        scale = np.abs(filled).max(axis=1, initial=0.0)
        degenerate = sum_sq <= n * (DEGENERATE_SPREAD * scale) ** 2
        std = np.where(n > 1, np.where(degenerate, 0.0, np.sqrt(sum_sq / (n - 1))), np.nan)
        spread = np.where(degenerate, np.nan, std)

        downside = np.sqrt((np.minimum(filled, 0.0) ** 2).sum(axis=1) / n)
        sortino = np.where(downside > 0, mean / downside * annual_root, np.nan)

        growth = np.prod(1.0 + filled, axis=1)
        wealth = np.cumprod(1.0 + filled, axis=1)
        peak = np.maximum(np.maximum.accumulate(wealth, axis=1), 1.0)
        max_drawdown = np.minimum((wealth / peak - 1.0).min(axis=1, initial=0.0), 0.0)
        cagr = growth ** (periods_per_year / n) - 1.0
        calmar = np.where(max_drawdown < 0, cagr / np.abs(max_drawdown), np.nan)

        ordered = np.sort(returns, axis=1)  # NaNs sort last, so valid values are ordered[:, :n]
        var_95 = _quantile_sorted(ordered, n, TAIL_QUANTILE)
        q_95 = _quantile_sorted(ordered, n, 1 - TAIL_QUANTILE)
        tail_count = np.floor((n - 1) * TAIL_QUANTILE).astype(np.int64) + 1
        tail_sum = np.take_along_axis(
            np.cumsum(np.where(np.isnan(ordered), 0.0, ordered), axis=1),
            np.maximum(tail_count - 1, 0)[:, None],
            axis=1,
        )[:, 0]
        cvar_95 = tail_sum / tail_count

        skew = (n * np.sqrt(n - 1.0) / (n - 2.0)) * (deviation**3).sum(axis=1) / sum_sq**1.5
        kurtosis = (n * (n + 1.0) * (n - 1.0) * (squares**2).sum(axis=1)) / (
            (n - 2.0) * (n - 3.0) * sum_sq**2
        ) - 3.0 * (n - 1.0) ** 2 / ((n - 2.0) * (n - 3.0))

        metrics = {
            "sharpe": mean / spread * annual_root,
            "sortino": sortino,
            "volatility": std * annual_root,
            "max_drawdown": max_drawdown,
            "cagr": cagr,
            "calmar": calmar,
            "omega": _omega(filled),
            "var_95": var_95,
            "cvar_95": cvar_95,
            "skew": np.where(n < 3, np.nan, np.where(degenerate, 0.0, skew)),
            "kurtosis": np.where(n < 4, np.nan, np.where(degenerate, 0.0, kurtosis)),
            "best": np.where(valid, returns, -np.inf).max(axis=1),
            "worst": np.where(valid, returns, np.inf).min(axis=1),
            "total_return": growth - 1.0,
            "tail_ratio": np.where(var_95 != 0, np.abs(q_95) / np.abs(var_95), np.nan),
            "risk_reward_ratio": mean / spread,
            "mean_return": mean,
            "std_return": std,
        }
    empty = n == 0
    for values in metrics.values():
        values[empty] = np.nan
    metrics["n"] = n
    return metrics


def _quantile_sorted(ordered: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """numpy's default (linear) percentile of each row's first n sorted values."""
    position = (np.maximum(n, 1) - 1) * q
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(n - 1, 0))
    low = np.take_along_axis(ordered, below[:, None], axis=1)[:, 0]
    high = np.take_along_axis(ordered, above[:, None], axis=1)[:, 0]
    return low + (high - low) * (position - below)


def _omega(excess: np.ndarray) -> np.ndarray:
    """Σ gains / Σ losses of excess returns per row (missing values must already be 0)."""
    gains = np.maximum(excess, 0.0).sum(axis=1)
    losses = np.maximum(-excess, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(losses > 0, gains / losses, np.nan)

"""Shape our analytics into Token Metrics API v2 responses (analytics.md §1).

v2 wraps rows as ``{"success", "message", "length", "data"}`` and names fields in UPPER_SNAKE.
TM names are used for the documented v2 fields and for the few TM internal-table fields that fit
(EXPECTED_SHORTFALL_CVAR, CURRENT_SUPPORT_LEVEL, CURRENT_RESISTANCE_LEVEL); everything else is a
clearly named extension (window, Calmar, best/worst month, level strength ...).
Conventions TM leaves open:
  * values are fractions (TM's docs say to multiply returns by 100 for percent);
  * DATE is ``YYYY-MM-DD`` (UTC day), hourly TIMESTAMP is ISO-8601 UTC with milliseconds and ``Z``;
  * undefined numbers (NaN in our arrays) become JSON ``null``;
  * TM-proprietary grades (TM_TRADER_GRADE, TM_INVESTOR_GRADE) and TM_LINK are ``null``: we do not
    compute them, and inventing values would mislead consumers that expect TM's semantics;
  * hourly SIGNAL/POSITION are strings ("1", "-1", "0") as in TM's SDK types; SIGNAL is the flip
    event and POSITION the exposure held, the hourly analogue of TRADING_SIGNAL/TOKEN_TREND.
Every function returns plain Python objects that ``json.dumps`` accepts as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from transforms.candles import as_utc_ms
from transforms.levels import Level, SupportResistance
from transforms.signals import Signals

MAX_PAGE_LIMIT = 100
DEFAULT_MESSAGE = "Data fetched successfully"

# TM v2 quantmetrics field <- metrics key. PROFIT_FACTOR is TM's Σ gains / Σ losses of daily
# returns, which is exactly Omega at threshold 0. DAILY_VALUE_AT_RISK is our historical 5% VaR
# (pyfolio's mean − 2σ is the other common reading; see analytics.md §2).
QUANTMETRICS_FIELDS = {
    "VOLATILITY": "volatility",
    "ALL_TIME_RETURN": "total_return",
    "CAGR": "cagr",
    "SHARPE": "sharpe",
    "SORTINO": "sortino",
    "MAX_DRAWDOWN": "max_drawdown",
    "SKEW": "skew",
    "TAIL_RATIO": "tail_ratio",
    "RISK_REWARD_RATIO": "risk_reward_ratio",
    "PROFIT_FACTOR": "omega",
    "KURTOSIS": "kurtosis",
    "DAILY_VALUE_AT_RISK": "var_95",
    "DAILY_RETURN_AVG": "mean_return",
    "DAILY_RETURN_STD": "std_return",
    # TM's internal table; not in the public v2 response but the natural name for CVaR.
    "EXPECTED_SHORTFALL_CVAR": "cvar_95",
}
# Our extensions, emitted after the TM fields.
QUANTMETRICS_EXTENSIONS = {
    "CALMAR": "calmar",
    "OMEGA": "omega",
    "BEST_DAY": "best",
    "WORST_DAY": "worst",
    "BEST_MONTH": "best_month",
    "WORST_MONTH": "worst_month",
}


@dataclass(frozen=True)
class Token:
    """TM identity of an asset, e.g. ``Token(3375, "Bitcoin", "BTC")``."""

    token_id: int
    name: str
    symbol: str

    def fields(self) -> dict[str, object]:
        return {"TOKEN_ID": self.token_id, "TOKEN_NAME": self.name, "TOKEN_SYMBOL": self.symbol}


def envelope(
    rows: Sequence[Mapping[str, object]],
    *,
    limit: int | None = None,
    page: int = 1,
    message: str = DEFAULT_MESSAGE,
) -> dict[str, object]:
    """TM response envelope; with ``limit`` (1–100, TM's cap) only that page (1-based) of rows."""
    if limit is not None:
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_LIMIT}, got {limit}")
        if page < 1:
            raise ValueError(f"page must be >= 1, got {page}")
        rows = rows[(page - 1) * limit : page * limit]
    data = list(rows)
    return {"success": True, "message": message, "length": len(data), "data": data}


def quantmetrics_row(
    token: Token,
    date: object,
    metrics: Mapping[str, object],
    *,
    window: str = "all",
    cagr_short_window: bool = False,
    n_returns: int | None = None,
) -> dict[str, object]:
    """One ``/v2/quantmetrics`` row from a metrics mapping (``metrics_from_returns`` output or one
    row of ``windowed_metrics``); keys it lacks (e.g. best_month) are emitted as null.

    Extensions: WINDOW, CAGR_SHORT_WINDOW, N_RETURNS and :data:`QUANTMETRICS_EXTENSIONS`.
    """
    row = {**token.fields(), "DATE": format_date(date)}
    for field, key in {**QUANTMETRICS_FIELDS, **QUANTMETRICS_EXTENSIONS}.items():
        row[field] = _json_number(metrics.get(key))
    row["WINDOW"] = window
    row["CAGR_SHORT_WINDOW"] = bool(cagr_short_window)
    row["N_RETURNS"] = None if n_returns is None else int(n_returns)
    return row


def quantmetrics_rows(
    token: Token, columns: Mapping[str, np.ndarray], *, window: str = "all"
) -> list[dict[str, object]]:
    """Rows of one window (default since inception, TM's own definition) from the columns of
    :func:`transforms.quantmetrics.windowed_metrics`, in as-of order."""
    selected = np.flatnonzero(np.asarray(columns["window"]) == window)
    return [
        quantmetrics_row(
            token,
            columns["as_of"][i],
            {key: values[i] for key, values in columns.items()},
            window=window,
            cagr_short_window=bool(columns["cagr_short_window"][i]),
            n_returns=int(columns["n_returns"][i]),
        )
        for i in selected
    ]


def resistance_support_row(
    token: Token, levels: SupportResistance, *, method: str = "swing_pivot_cluster"
) -> dict[str, object]:
    """One ``/v2/resistance-support`` row.

    HISTORICAL_RESISTANCE_SUPPORT_LEVELS keeps TM's ``{date, level}`` (date = newest pivot of the
    level), sorted by price like TM's consumers sort them, with extension keys ``kind``,
    ``strength``, ``touches``, ``distance_pct``, ``band_low``, ``band_high``, ``method``.
    CURRENT_SUPPORT_LEVEL / CURRENT_RESISTANCE_LEVEL (TM internal-table names) are the nearest
    level on each side, null when there is none.
    """
    ordered = sorted(levels.supports + levels.resistances, key=lambda level: level.price)
    return {
        **token.fields(),
        "DATE": format_date(levels.as_of),
        "HISTORICAL_RESISTANCE_SUPPORT_LEVELS": [_level_entry(level, method) for level in ordered],
        "CURRENT_SUPPORT_LEVEL": _nearest_price(levels.nearest_support),
        "CURRENT_RESISTANCE_LEVEL": _nearest_price(levels.nearest_resistance),
    }


def _level_entry(level: Level, method: str) -> dict[str, object]:
    return {
        "date": format_date(level.last_pivot),
        "level": _json_number(level.price),
        "kind": level.kind,
        "strength": _json_number(level.strength),
        "touches": level.touches,
        "distance_pct": _json_number(level.distance_pct),
        "band_low": _json_number(level.band_low),
        "band_high": _json_number(level.band_high),
        "method": method,
    }


def _nearest_price(level: Level | None) -> float | None:
    return None if level is None else _json_number(level.price)


def trading_signal_rows(token: Token, dates: Sequence | np.ndarray, signals: Signals) -> list[dict[str, object]]:
    """``/v2/trading-signals`` rows for every warmed-up daily bar, oldest first.

    Warm-up bars are omitted: there is no signal yet, and a 0/0 row would read as "no signal today".
    Extensions: CONFIDENCE (share of the five votes agreeing with the trend) and SCORE.
    """
    stamps = as_utc_ms(dates)
    return [
        {
            **token.fields(),
            "DATE": format_date(stamps[i]),
            "TRADING_SIGNAL": int(signals.trading_signal[i]),
            "TOKEN_TREND": int(signals.token_trend[i]),
            "TRADING_SIGNALS_RETURNS": _json_number(signals.trading_signals_returns[i]),
            "HOLDING_RETURNS": _json_number(signals.holding_returns[i]),
            "TM_TRADER_GRADE": None,
            "TM_INVESTOR_GRADE": None,
            "TM_LINK": None,
            "CONFIDENCE": _json_number(signals.confidence[i]),
            "SCORE": _json_number(signals.score[i]),
        }
        for i in np.flatnonzero(signals.warmed_up)
    ]


def hourly_trading_signal_rows(
    token: Token, timestamps: Sequence | np.ndarray, close: Sequence[float] | np.ndarray, signals: Signals
) -> list[dict[str, object]]:
    """``/v2/hourly-trading-signals`` rows (TIMESTAMP = bar open time) for warmed-up bars."""
    stamps = as_utc_ms(timestamps)
    prices = np.asarray(close, dtype=np.float64)
    return [
        {
            "TIMESTAMP": format_timestamp(stamps[i]),
            **token.fields(),
            "CLOSE": _json_number(prices[i]),
            "SIGNAL": str(int(signals.trading_signal[i])),
            "POSITION": str(int(signals.position[i])),
        }
        for i in np.flatnonzero(signals.warmed_up)
    ]


def format_date(value: object) -> str:
    """UTC day as ``YYYY-MM-DD``."""
    return str(as_utc_ms([value])[0].astype("datetime64[D]"))


def format_timestamp(value: object) -> str:
    """UTC instant as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return f"{as_utc_ms([value])[0]}Z"


def _json_number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None

"""OHLCV candles as plain numpy arrays: CSV parsing/validation and time-bucket resampling.

The CSV reader is the back end of ``perpflow import-candles``. It takes text, not a path, so the
caller owns the I/O and the error messages can still name the source and line. It accepts the Bybit
v5 kline layout ``startTime,open,high,low,close,volume,turnover``, with or without a header, and
the variants seen in the wild:
  * header names in any case/punctuation (``startTime``, ``open_time``, ``timestamp``, ``date`` ...);
  * epoch timestamps in milliseconds (Bybit API) or seconds, or ISO-8601 strings (the pandas dumps
    in ../shared/data write ``2025-09-11 08:00:00``); naive times are UTC because Bybit's are;
  * rows newest-first, which is the order the Bybit REST API returns.

A bad file is rejected as a whole: a half-imported history would silently skew every metric built
on it. All problems (up to ``max_errors``) are reported at once so the user can fix a file in one
pass.

Timestamps are bar *open* times in ``datetime64[ms]`` (UTC, naive), the Bybit and TradingView
convention; a daily bar stamped 2025-10-10 covers 2025-10-10T00:00Z..2025-10-11T00:00Z.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MS_PER_UNIT = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# 1970-01-01 was a Thursday; weekly bars (Bybit "W", TradingView) start on Monday 1970-01-05.
WEEK_ORIGIN_MS = 4 * MS_PER_UNIT["d"]
# Epoch values at or above this are milliseconds: as seconds they would be past the year 5000.
MS_EPOCH_THRESHOLD = 100_000_000_000
# Timestamps outside this range are almost always a unit mix-up (seconds read as ms or vice versa).
PLAUSIBLE_YEARS = (1990, 2100)

_COLUMN_ALIASES = {
    "ts": ("timestamp", "time", "ts", "date", "datetime", "opentime", "starttime", "start", "t"),
    "open": ("open", "o", "openprice"),
    "high": ("high", "h", "highprice"),
    "low": ("low", "l", "lowprice"),
    "close": ("close", "c", "closeprice"),
    "volume": ("volume", "vol", "v", "basevolume"),
    "turnover": ("turnover", "quotevolume", "quoteassetvolume", "volumeusd"),
}
_REQUIRED_COLUMNS = ("ts", "open", "high", "low", "close", "volume")
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "turnover")
# Bybit /v5/market/kline `list` item order, used when a file has no header.
_BYBIT_POSITIONAL = ("ts", *_VALUE_COLUMNS)


@dataclass(frozen=True)
class Candles:
    """Columnar OHLCV bars sorted by strictly increasing open time.

    ``turnover`` (quote volume) is NaN where the source did not provide it.
    """

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    turnover: np.ndarray

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, name)) for name in self.__dataclass_fields__}
        if len(lengths) != 1:
            raise ValueError(f"candle columns have different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, rows: slice | np.ndarray) -> Candles:
        """Row subset with the same columns, e.g. ``candles[:i + 1]`` for an as-of view."""
        return Candles(*(getattr(self, name)[rows] for name in self.__dataclass_fields__))


def as_utc_ms(values: Sequence | np.ndarray) -> np.ndarray:
    """Coerce timestamps to ``datetime64[ms]`` UTC.

    Accepts numpy datetime64 arrays, ``datetime``/``date`` objects (aware ones are converted to UTC,
    naive ones are taken as UTC), ISO-8601 strings, or integer epoch milliseconds.
    """
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.datetime64):
        return array.astype("datetime64[ms]")
    if np.issubdtype(array.dtype, np.integer):
        return array.astype("datetime64[ms]")
    return np.array([_utc_ms(item) for item in array.ravel()], dtype="datetime64[ms]").reshape(array.shape)


def _utc_ms(item: object) -> np.datetime64:
    if isinstance(item, str):
        item = _parse_iso(item)
    if isinstance(item, dt.datetime):
        if item.tzinfo is not None:
            item = item.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return np.datetime64(item, "ms")
    if isinstance(item, dt.date):
        return np.datetime64(item, "D").astype("datetime64[ms]")
    if isinstance(item, np.datetime64):
        return item.astype("datetime64[ms]")
    raise ValueError(f"cannot interpret {item!r} as a timestamp")


def _parse_iso(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"timestamp {text!r} is not ISO-8601 or an epoch number") from None


def parse_interval(spec: str | int) -> int:
    """Bar length in milliseconds from ``"1m"``, ``"5m"``, ``"1h"``, ``"4h"``, ``"1d"``, ``"1w"``
    (or a positive integer of milliseconds). Months are not fixed-length and are rejected."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec <= 0:
            raise ValueError(f"interval must be positive, got {spec} ms")
        return spec
    match = re.fullmatch(r"\s*(\d+)\s*([smhdwSHDW])\s*", str(spec))
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"interval {spec!r} is not <positive int><unit> with unit in s, m, h, d, w")
    return int(match.group(1)) * MS_PER_UNIT[match.group(2).lower()]


def infer_interval_ms(ts: np.ndarray) -> int:
    """Most common spacing between consecutive bars (robust to gaps in the history)."""
    steps = np.diff(as_utc_ms(ts).astype(np.int64))
    if steps.size == 0:
        raise ValueError("need at least two bars to infer the bar interval")
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def parse_candles_csv(text: str | Iterable[str], *, source: str = "<csv>", max_errors: int = 20) -> Candles:
    """Parse and validate candle CSV text into :class:`Candles`.

    Raises ValueError listing every bad row as ``<source> line <n>: <problem>`` (up to
    ``max_errors``): wrong field count, unparseable or non-finite numbers, non-positive prices,
    negative volume, high/low not bracketing open/close, timestamps mixing seconds and
    milliseconds or implausible for either, and duplicated timestamps.
    """
    lines = text.splitlines() if isinstance(text, str) else text
    rows = [
        (line_no, fields)
        for line_no, fields in enumerate(csv.reader(lines), start=1)
        if fields and any(field.strip() for field in fields) and not fields[0].lstrip().startswith("#")
    ]
    if not rows:
        raise ValueError(f"{source}: no candle rows")
    first_line, first_row = rows[0]
    columns = _detect_columns(first_row, source, first_line)
    if columns is None:
        if len(first_row) not in (6, 7):
            raise ValueError(
                f"{source} line {first_line}: no header and {len(first_row)} fields; expected a header or "
                "the Bybit kline order startTime,open,high,low,close,volume[,turnover]"
            )
        columns = {name: position for position, name in enumerate(_BYBIT_POSITIONAL[: len(first_row)])}
    else:
        rows = rows[1:]
    return _validated_candles(rows, columns, len(first_row), source, max_errors)


def _normalize_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _detect_columns(header: list[str], source: str, line_no: int) -> dict[str, int] | None:
    """Map canonical column names to positions, or None when the first row is data."""
    names = [_normalize_name(field) for field in header]
    alias_to_column = {alias: column for column, aliases in _COLUMN_ALIASES.items() for alias in aliases}
    found: dict[str, int] = {}
    for position, name in enumerate(names):
        column = alias_to_column.get(name)
        if column is None:
            continue
        if column in found:
            raise ValueError(
                f"{source} line {line_no}: columns {header[found[column]]!r} and {header[position]!r} "
                f"both look like {column!r}"
            )
        found[column] = position
    if not found:
        return None
    missing = [column for column in _REQUIRED_COLUMNS if column not in found]
    if missing:
        raise ValueError(f"{source} line {line_no}: header {header} lacks column(s) {', '.join(missing)}")
    return found


def _validated_candles(
    rows: list[tuple[int, list[str]]], columns: dict[str, int], width: int, source: str, max_errors: int
) -> Candles:
    errors: list[str] = []
    line_numbers: list[int] = []
    parsed: list[tuple[int, float, float, float, float, float, float]] = []
    epoch_unit: tuple[str, int] | None = None  # (unit, first line using it)
    for line_no, fields in rows:
        if len(errors) >= max_errors:
            break
        if len(fields) != width:
            errors.append(f"line {line_no}: {len(fields)} fields, expected {width}")
            continue
        try:
            ts_ms, unit = _parse_timestamp(fields[columns["ts"]])
            if unit is not None:
                if epoch_unit is None:
                    epoch_unit = (unit, line_no)
                elif unit != epoch_unit[0]:
                    raise ValueError(
                        f"epoch timestamp in {unit} but line {epoch_unit[1]} used {epoch_unit[0]}"
                    )
            values = {name: _parse_number(fields, columns, name) for name in _VALUE_COLUMNS}
            _check_bar(values)
        except ValueError as problem:
            errors.append(f"line {line_no}: {problem}")
            continue
        line_numbers.append(line_no)
        parsed.append((ts_ms, *(values[name] for name in _VALUE_COLUMNS)))
    if errors:
        shown = "\n  ".join(f"{source} {error}" for error in errors)
        more = " (stopped early)" if len(errors) >= max_errors else ""
        raise ValueError(f"{source}: {len(errors)} invalid candle row(s){more}:\n  {shown}")
    if not parsed:
        raise ValueError(f"{source}: header but no candle rows")

    table = np.array(parsed, dtype=np.float64)
    ts = np.array([row[0] for row in parsed], dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ts, table = ts[order], table[order]
    duplicate = np.flatnonzero(np.diff(ts) == 0)
    if duplicate.size:
        lines = np.asarray(line_numbers)[order]
        shown = "\n  ".join(
            f"{source} lines {lines[i]} and {lines[i + 1]}: duplicate timestamp {np.datetime64(int(ts[i]), 'ms')}"
            for i in duplicate[:max_errors]
        )
        raise ValueError(f"{source}: {duplicate.size} duplicated timestamp(s):\n  {shown}")
    return Candles(ts.astype("datetime64[ms]"), *(table[:, k].copy() for k in range(1, 7)))


def _parse_timestamp(field: str) -> tuple[int, str | None]:
    """Epoch ms and, for numeric input, the detected unit ('ms' or 's')."""
    text = field.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is None:
        stamp = _utc_ms(text).astype(np.int64)
        unit = None
    elif not math.isfinite(number):
        raise ValueError(f"timestamp {text!r} is not finite")
    elif abs(number) >= MS_EPOCH_THRESHOLD:
        stamp, unit = round(number), "ms"
    else:
        stamp, unit = round(number * 1000), "s"
    year = int(np.datetime64(int(stamp), "ms").astype("datetime64[Y]").astype(int)) + 1970
    if not PLAUSIBLE_YEARS[0] <= year < PLAUSIBLE_YEARS[1]:
        raise ValueError(f"timestamp {text!r} decodes to year {year}; wrong unit?")
    return int(stamp), unit


def _parse_number(fields: list[str], columns: dict[str, int], name: str) -> float:
    if name not in columns:
        return math.nan
    text = fields[columns[name]].strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} {text!r} is not finite")
    return value


def _check_bar(values: dict[str, float]) -> None:
    for name in ("open", "high", "low", "close"):
        if values[name] <= 0:
            raise ValueError(f"{name} {values[name]} is not positive")
    for name in ("volume", "turnover"):
        if values[name] < 0:
            raise ValueError(f"{name} {values[name]} is negative")
    body_top = max(values["open"], values["close"])
    body_bottom = min(values["open"], values["close"])
    if values["high"] < body_top:
        raise ValueError(f"high {values['high']} is below max(open, close) {body_top}")
    if values["low"] > body_bottom:
        raise ValueError(f"low {values['low']} is above min(open, close) {body_bottom}")


def resample_candles(
    candles: Candles,
    interval: str | int,
    *,
    source_interval: str | int | None = None,
    min_coverage: float = 1.0,
) -> Candles:
    """Aggregate bars into UTC-aligned buckets of ``interval`` (e.g. 1h -> 1d, 1m -> 1h).

    ``candles`` must be sorted by time, as :func:`parse_candles_csv` returns them.
    Buckets are aligned to the epoch (days at 00:00 UTC, hours on the hour) and weeks start on
    Monday. open = first, high = max, low = min, close = last, volume/turnover = sum.
    A bucket is kept only if it holds at least ``min_coverage`` of the source bars it should
    contain; the default 1.0 drops the still-forming last day and days with missing hours, which
    would otherwise masquerade as real candles with a wrong close or range.
    """
    target_ms = parse_interval(interval)
    step_ms = infer_interval_ms(candles.ts) if source_interval is None else parse_interval(source_interval)
    if target_ms < step_ms or target_ms % step_ms:
        raise ValueError(f"cannot resample {step_ms} ms bars into {target_ms} ms buckets (not a multiple)")
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    origin = WEEK_ORIGIN_MS if target_ms % MS_PER_UNIT["w"] == 0 else 0
    stamps = candles.ts.astype("datetime64[ms]").astype(np.int64)
    bucket = (stamps - origin) // target_ms
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(stamps)] - 1
    keep = (ends - starts + 1) >= min_coverage * (target_ms // step_ms)
    # Reduce over every bucket and select afterwards: reduceat over only the kept starts would
    # fold the bars of dropped buckets into their predecessors.
    return Candles(
        ts=(bucket[starts[keep]] * target_ms + origin).astype("datetime64[ms]"),
        open=candles.open[starts[keep]],
        high=np.maximum.reduceat(candles.high, starts)[keep],
        low=np.minimum.reduceat(candles.low, starts)[keep],
        close=candles.close[ends[keep]],
        volume=np.add.reduceat(candles.volume, starts)[keep],
        turnover=np.add.reduceat(candles.turnover, starts)[keep],
    )

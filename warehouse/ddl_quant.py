"""Tables of issue 5: imported candles, price history, quant metrics, levels, signals, signal performance.

Every statement is idempotent (``IF NOT EXISTS``) so the list can be one migration step. Like the
other analytics tables these carry no primary key: each asset rewrites its partitions with
delete+insert in one transaction and an asset check proves the key is unique.

Time conventions: ``ts`` is a bar's *open* time (UTC, naive TIMESTAMP), so the daily bar stamped
2025-10-10 closes at 2025-10-11 00:00; ``day`` is the UTC day a row belongs to, i.e. its Dagster
partition. NULL means undefined (too little history, zero denominator), never zero.
"""

CANDLE_COLUMNS = """
    open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL, close DOUBLE NOT NULL,
    volume DOUBLE NOT NULL,           -- base units
    quote_volume DOUBLE               -- quote units (turnover); NULL when the source has none
"""

PRICE_HISTORY_COLUMNS = f"""
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,          -- normalized, e.g. BTC-USDT-PERP
    ts TIMESTAMP NOT NULL,            -- bar open, UTC
    {CANDLE_COLUMNS},
    source VARCHAR NOT NULL,          -- 'import' (raw.candles) or 'trades' (analytics.ohlcv_1m)
    minutes INTEGER,                  -- one-minute bars behind a 'trades' bar; NULL for imports
    day DATE NOT NULL
"""

SIGNAL_COLUMNS = """
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,            -- bar open, UTC
    bar_close TIMESTAMP NOT NULL,     -- when the signal is known; the position earns the next bar
    day DATE NOT NULL,
    close DOUBLE NOT NULL,
    history_start TIMESTAMP NOT NULL, -- first bar of the gap-free history the indicators ran on
    vote_supertrend TINYINT, vote_ema_cross TINYINT, vote_sma_regime TINYINT,
    vote_donchian TINYINT, vote_macd TINYINT,
    supertrend DOUBLE,                -- the SuperTrend line
    score DOUBLE NOT NULL,            -- sum of votes / 5
    token_trend TINYINT NOT NULL,     -- state: -1, 0 (no entry yet), 1
    trading_signal TINYINT NOT NULL,  -- event on the flip bar: -1, 1; else 0
    confidence DOUBLE NOT NULL,       -- share of votes agreeing with token_trend
    position TINYINT NOT NULL,        -- exposure held over the next bar
    trading_signals_returns DOUBLE NOT NULL,  -- cumulative strategy return since warm-up
    holding_returns DOUBLE NOT NULL           -- cumulative buy-and-hold return, same span
"""

STATEMENTS: list[str] = [
    "CREATE SCHEMA IF NOT EXISTS raw",
    "CREATE SCHEMA IF NOT EXISTS analytics",
    f"""CREATE TABLE IF NOT EXISTS raw.candles (
        exchange VARCHAR NOT NULL,
        symbol VARCHAR NOT NULL,
        interval VARCHAR NOT NULL,    -- '1d' or '1h'
        ts TIMESTAMP NOT NULL,        -- bar open, UTC
        {CANDLE_COLUMNS},
        source VARCHAR NOT NULL,      -- file name the bar was imported from
        imported_at TIMESTAMP NOT NULL
    )""",
    f"CREATE TABLE IF NOT EXISTS analytics.candles_1d ({PRICE_HISTORY_COLUMNS})",
    f"CREATE TABLE IF NOT EXISTS analytics.candles_1h ({PRICE_HISTORY_COLUMNS})",
    """CREATE TABLE IF NOT EXISTS analytics.quantmetrics (
        exchange VARCHAR NOT NULL,
        symbol VARCHAR NOT NULL,
        as_of DATE NOT NULL,          -- the window ends with this day's return (close of as_of)
        lookback VARCHAR NOT NULL,    -- '30d', '90d', '365d', 'all'
        lookback_days INTEGER NOT NULL,
        n_returns INTEGER NOT NULL,
        coverage DOUBLE NOT NULL,     -- n_returns / lookback_days; metrics are NULL below 0.9
        cagr_short_window BOOLEAN NOT NULL,   -- CAGR annualizes under a year: mostly noise
        sharpe DOUBLE, sortino DOUBLE, volatility DOUBLE, max_drawdown DOUBLE, cagr DOUBLE,
        calmar DOUBLE, omega DOUBLE, var_95 DOUBLE, cvar_95 DOUBLE, skew DOUBLE, kurtosis DOUBLE,
        best DOUBLE, worst DOUBLE, total_return DOUBLE, tail_ratio DOUBLE, risk_reward_ratio DOUBLE,
        mean_return DOUBLE, std_return DOUBLE,
        best_month DOUBLE, worst_month DOUBLE
    )""",
    """CREATE TABLE IF NOT EXISTS analytics.support_resistance_levels (
        exchange VARCHAR NOT NULL,
        symbol VARCHAR NOT NULL,
        timeframe VARCHAR NOT NULL,   -- '1d' or '1h' bars
        day DATE NOT NULL,
        as_of TIMESTAMP NOT NULL,     -- open of the last bar used
        method VARCHAR NOT NULL,      -- 'swing_pivot_cluster' or 'pivot_classic'
        name VARCHAR NOT NULL,        -- S1.. / R1.. nearest first; pivot points: P, R1-R3, S1-S3
        price DOUBLE NOT NULL,
        kind VARCHAR NOT NULL,        -- 'support' below the last close, else 'resistance'
        distance_pct DOUBLE NOT NULL, -- (price / close - 1) * 100
        strength DOUBLE,              -- 0-100 (swing levels only)
        touches INTEGER, pivots INTEGER, volume_share DOUBLE,
        band_low DOUBLE, band_high DOUBLE,
        last_pivot TIMESTAMP, last_touch TIMESTAMP,
        close DOUBLE NOT NULL,        -- last close
        atr DOUBLE,                   -- ATR14 (Wilder) of the timeframe
        tolerance DOUBLE              -- clustering tolerance
    )""",
    f"CREATE TABLE IF NOT EXISTS analytics.trading_signals ({SIGNAL_COLUMNS})",
    f"CREATE TABLE IF NOT EXISTS analytics.hourly_trading_signals ({SIGNAL_COLUMNS})",
    """CREATE TABLE IF NOT EXISTS analytics.signal_performance (
        exchange VARCHAR NOT NULL,
        symbol VARCHAR NOT NULL,
        timeframe VARCHAR NOT NULL,   -- '1d' (trading_signals) or '1h' (hourly_trading_signals)
        day DATE NOT NULL,
        as_of TIMESTAMP NOT NULL,     -- open of the last bar evaluated
        history_start TIMESTAMP NOT NULL,
        horizon VARCHAR NOT NULL,     -- '1d', '3d', '7d' or '4h', '24h'
        horizon_bars INTEGER NOT NULL,
        n_bars INTEGER NOT NULL,
        n_signals INTEGER NOT NULL,   -- flip events so far
        events INTEGER NOT NULL,      -- events old enough to score at this horizon
        hits INTEGER NOT NULL,
        hit_rate DOUBLE, hit_ci_low DOUBLE, hit_ci_high DOUBLE,       -- Wilson 95%
        trades_closed INTEGER NOT NULL, trade_wins INTEGER NOT NULL,
        win_rate DOUBLE, win_ci_low DOUBLE, win_ci_high DOUBLE,
        profit_factor DOUBLE, mean_trade_return DOUBLE, open_trade_return DOUBLE,
        strategy_total_return DOUBLE, strategy_sharpe DOUBLE, strategy_max_drawdown DOUBLE,
        strategy_volatility DOUBLE,
        holding_total_return DOUBLE, holding_sharpe DOUBLE, holding_max_drawdown DOUBLE,
        holding_volatility DOUBLE
    )""",
]

"""Tables of the microstructure assets (issue 4), migration 2 of ``warehouse.schema``.

Every table carries ``day DATE``, the UTC partition its rows belong to, so a partition is
rewritten with one ``DELETE ... WHERE day = ?`` and exported to Parquet with one ``WHERE day``.
Cross-venue rows use ``exchange = 'all'`` and the base asset as ``symbol`` (CoinGlass's "All").
The ``book_depth`` columns are generated from ``transforms.depth.BANDS`` so the table and the
computation name bands the same way (``bid_usd_2_mean`` = USD bids within 2 % of mid, minute mean);
changing the bands needs a new migration, like any column change.
"""

from __future__ import annotations

from transforms.depth import BANDS, band_label
from transforms.slippage import ORDER_SIZES_USD, size_label

STATS = ("mean", "min", "last")
SIDE_FIELDS = ("bid_base", "ask_base", "bid_quote", "ask_quote", "bid_usd", "ask_usd", "imbalance", "depth_usd")
OI_WINDOWS = ("5m", "1h", "4h", "24h")


def book_depth_columns() -> list[str]:
    """The per-minute statistics of ``analytics.book_depth`` (all DOUBLE), in table order."""
    columns = [f"{name}_{stat}" for name in ("best_bid", "best_ask", "mid") for stat in STATS]
    columns += [f"spread_bps_{stat}" for stat in (*STATS, "max")]
    columns += [f"{name}_{band_label(band)}_{stat}" for band in BANDS for name in SIDE_FIELDS for stat in STATS]
    return columns


def _book_depth() -> str:
    stats = ",\n    ".join(f"{column} DOUBLE" for column in book_depth_columns())
    return f"""CREATE TABLE IF NOT EXISTS analytics.book_depth (
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    minute TIMESTAMP NOT NULL,
    n_snapshots INTEGER NOT NULL,     -- periodic book snapshots in the minute
    n_valid INTEGER NOT NULL,         -- of which valid (two-sided, not crossed or locked)
    quote_usd_rate DOUBLE NOT NULL,   -- quote -> USD used for the *_usd columns
    {stats},
    day DATE NOT NULL
)"""


LIQUIDITY_WITHDRAWALS = """
CREATE TABLE IF NOT EXISTS analytics.liquidity_withdrawals (
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    episode_start TIMESTAMP NOT NULL,
    episode_end TIMESTAMP NOT NULL,        -- exclusive: last below-threshold minute + 1 minute
    minutes DOUBLE NOT NULL,
    n_below INTEGER NOT NULL,              -- minutes below the threshold (merged gaps excluded)
    worst_ratio DOUBLE NOT NULL,           -- lowest 2 % depth / trailing 24 h median
    worst_at TIMESTAMP NOT NULL,
    depth_at_worst_usd DOUBLE,
    baseline_depth_usd DOUBLE,             -- trailing median at the episode start
    depth_before_usd DOUBLE,               -- last 2 % depth before the episode
    threshold DOUBLE NOT NULL,
    open_at_day_end BOOLEAN NOT NULL,      -- still below at the day's last minute
    day DATE NOT NULL
)"""

_OI_CHANGES = ",\n    ".join(f"oi_change_pct_{w} DOUBLE, oi_usd_change_pct_{w} DOUBLE" for w in OI_WINDOWS)

OPEN_INTEREST = f"""
CREATE TABLE IF NOT EXISTS analytics.open_interest (
    exchange VARCHAR NOT NULL,             -- 'all' = cross-venue total
    symbol VARCHAR NOT NULL,               -- the base asset on 'all' rows
    asset VARCHAR NOT NULL,
    grain VARCHAR NOT NULL,                -- '5m' | '1h'
    bucket_start TIMESTAMP NOT NULL,
    open_interest DOUBLE,                  -- coins (contracts converted: warehouse.units)
    open_interest_usd DOUBLE,              -- coins x mark price; inverse: contracts x USD per contract
    mark_price DOUBLE,                     -- NULL on 'all' rows
    n_venues INTEGER NOT NULL,
    {_OI_CHANGES},                         -- 'all' rows: like for like, over the venues in both buckets
    day DATE NOT NULL
)"""

FUNDING = """
CREATE TABLE IF NOT EXISTS analytics.funding (
    exchange VARCHAR NOT NULL,             -- 'all' = open-interest-weighted across venues
    symbol VARCHAR NOT NULL,
    asset VARCHAR NOT NULL,
    minute TIMESTAMP NOT NULL,
    funding_rate DOUBLE,                   -- as quoted, per interval; NULL on 'all' rows
    interval_hours DOUBLE NOT NULL,
    rate_8h DOUBLE,
    rate_annualized DOUBLE,                -- rate_8h x 3 x 365, a fraction
    mark_price DOUBLE,
    index_price DOUBLE,
    is_realised BOOLEAN,                   -- settled rate rather than the running estimate
    oi_usd DOUBLE,                         -- the weight: open interest in USD as of the minute
    n_venues INTEGER NOT NULL,
    day DATE NOT NULL
)"""

LIQUIDATIONS_1M = """
CREATE TABLE IF NOT EXISTS analytics.liquidations_1m (
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    asset VARCHAR NOT NULL,
    minute TIMESTAMP NOT NULL,
    long_usd DOUBLE NOT NULL,              -- base qty x coalesce(avg_price, price); inverse: contracts x USD each
    short_usd DOUBLE NOT NULL,
    long_qty DOUBLE NOT NULL,              -- base units
    short_qty DOUBLE NOT NULL,
    n_long INTEGER NOT NULL,
    n_short INTEGER NOT NULL,
    is_lower_bound BOOLEAN NOT NULL,       -- the venue samples its feed (Binance: 1/s/symbol)
    day DATE NOT NULL
)"""

LIQUIDATION_CASCADES = """
CREATE TABLE IF NOT EXISTS analytics.liquidation_cascades (
    asset VARCHAR NOT NULL,
    side VARCHAR NOT NULL,                 -- liquidated side: 'long' | 'short'
    cascade_start TIMESTAMP NOT NULL,
    cascade_end TIMESTAMP NOT NULL,
    duration_s DOUBLE NOT NULL,
    n_orders INTEGER NOT NULL,
    usd DOUBLE NOT NULL,
    usd_long DOUBLE NOT NULL,
    usd_short DOUBLE NOT NULL,
    long_share DOUBLE,
    peak_1m_usd DOUBLE,
    baseline_1m_usd DOUBLE,                -- median liquidated USD per minute, trailing 30 days
    threshold_usd DOUBLE NOT NULL,
    start_price DOUBLE,
    extreme_price DOUBLE,
    price_move_bps DOUBLE,
    impact_bps_per_musd DOUBLE,
    depth_ratio_2pct DOUBLE,               -- min 2 % depth during / median over the prior hour
    depth_ratio_1pct DOUBLE,
    depth_median_ratio_2pct DOUBLE,        -- median 2 % depth during / median over the prior hour
    spread_peak_bps DOUBLE,
    oi_start DOUBLE,                       -- coins, all venues: positions, not price, move it
    oi_end DOUBLE,
    oi_change_pct DOUBLE,
    funding_before_8h DOUBLE,
    funding_after_8h DOUBLE,
    hawkes_n DOUBLE,                       -- branching ratio
    hawkes_mu DOUBLE,
    hawkes_beta DOUBLE,
    hawkes_lambda_max DOUBLE,
    hawkes_at_bound BOOLEAN,
    hawkes_reason VARCHAR,
    venues VARCHAR NOT NULL,               -- comma-separated exchanges with orders in the cascade
    is_lower_bound BOOLEAN NOT NULL,
    open_at_day_end BOOLEAN NOT NULL,      -- could have continued after midnight
    day DATE NOT NULL
)"""

MARKET_STRESS = """
CREATE TABLE IF NOT EXISTS analytics.market_stress (
    asset VARCHAR NOT NULL,
    minute TIMESTAMP NOT NULL,
    stress_index DOUBLE,                   -- 0..100; NULL while too few components are warm
    depth_component DOUBLE,
    liquidation_component DOUBLE,
    oi_component DOUBLE,
    funding_component DOUBLE,
    coverage DOUBLE NOT NULL,              -- weight share of the defined components
    depth_2pct_usd DOUBLE,
    liquidated_usd DOUBLE NOT NULL,
    oi_usd DOUBLE,
    funding_8h DOUBLE,
    day DATE NOT NULL,
    depth_books INTEGER,                   -- books (venue/symbol) the depth component compared with their baselines
    depth_book_names VARCHAR               -- which: comma-separated exchange/symbol
)"""

# Migration 14: the share of a map score's top-quartile bins the map ranked itself (transforms.liquidation_map).
LIQUIDATION_SCORE_RANKED_SHARE = ["ALTER TABLE analytics.liquidation_level_scores "
                                  "ADD COLUMN IF NOT EXISTS ranked_share DOUBLE"]

# Migration 13: the books behind the depth component (a venue missing in a minute no longer counts).
MARKET_STRESS_DEPTH_BOOKS = ["ALTER TABLE analytics.market_stress ADD COLUMN IF NOT EXISTS depth_books INTEGER",
                             "ALTER TABLE analytics.market_stress ADD COLUMN IF NOT EXISTS depth_book_names VARCHAR"]

ADL_EVENTS = """
CREATE TABLE IF NOT EXISTS analytics.adl_events (
    ts TIMESTAMP NOT NULL,
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    asset VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,                 -- 'fill' | 'state'
    side VARCHAR,                          -- the position ADL reduced, where the venue says
    qty DOUBLE,                            -- base units (fills)
    price DOUBLE,
    usd DOUBLE,
    state VARCHAR,                         -- the venue's state word (states)
    trade_id VARCHAR,                      -- the fill's raw.trades id where it is also a trade
    detail VARCHAR,                        -- the venue's other fields, JSON
    coverage VARCHAR NOT NULL,             -- the venue's coverage of ADL (meta.venue_coverage)
    day DATE NOT NULL
)"""

STATEMENTS: list[str] = [
    "CREATE SCHEMA IF NOT EXISTS analytics",
    _book_depth(),
    LIQUIDITY_WITHDRAWALS,
    OPEN_INTEREST,
    FUNDING,
    LIQUIDATIONS_1M,
    LIQUIDATION_CASCADES,
    MARKET_STRESS,
]


# --- migration 11: positioning tables (issue 11) and the depth bands' visible-book flags ---------

AGGREGATED_OPEN_INTEREST = """
CREATE TABLE IF NOT EXISTS analytics.aggregated_open_interest (
    asset VARCHAR NOT NULL,
    venue VARCHAR NOT NULL,                -- exchange, or 'all' = across venues of one kind
    pool_counterparty BOOLEAN NOT NULL,    -- GMX-style pool OI (long + short): never summed with one-sided OI
    grain VARCHAR NOT NULL,                -- '5m' | '1h'
    bucket_start TIMESTAMP NOT NULL,
    oi_coin DOUBLE NOT NULL,               -- one side; pool rows: long + short
    oi_usd DOUBLE NOT NULL,
    oi_long_coin DOUBLE, oi_long_usd DOUBLE,     -- pool rows only
    oi_short_coin DOUBLE, oi_short_usd DOUBLE,   -- pool rows only
    n_markets INTEGER NOT NULL,
    n_venues INTEGER NOT NULL,
    oi_coin_change DOUBLE, oi_usd_change DOUBLE, -- vs the previous bucket, NULL when its markets differ
    oi_coin_change_pct DOUBLE, oi_usd_change_pct DOUBLE,
    day DATE NOT NULL
)"""

AGGREGATED_FUNDING = """
CREATE TABLE IF NOT EXISTS analytics.aggregated_funding (
    asset VARCHAR NOT NULL,
    venue VARCHAR NOT NULL,                -- exchange, or 'all' = OI-weighted across venues
    is_realised BOOLEAN NOT NULL,          -- settled rates vs the running estimates: separate series
    grain VARCHAR NOT NULL,                -- '5m' | '1h'
    bucket_start TIMESTAMP NOT NULL,
    rate_8h DOUBLE,                        -- NULL on an 'all' row none of whose venues had an OI weight
    rate_annualized DOUBLE,                -- rate_8h x 3 x 365, a fraction
    oi_usd DOUBLE,                         -- the weight used
    weighted BOOLEAN NOT NULL,             -- False: no OI weight, plain mean of the venue's markets
    n_markets INTEGER NOT NULL,
    n_venues INTEGER NOT NULL,
    n_weighted INTEGER NOT NULL,
    vs_weighted_8h DOUBLE,                 -- venue rows: rate_8h minus the cross-venue weighted rate
    spread_8h DOUBLE,                      -- 'all' rows: highest minus lowest venue rate_8h
    spread_high_venue VARCHAR,
    spread_low_venue VARCHAR,
    day DATE NOT NULL
)"""

TAKER_VOLUME = """
CREATE TABLE IF NOT EXISTS analytics.taker_volume (
    exchange VARCHAR NOT NULL,             -- 'all' = summed across venues
    symbol VARCHAR NOT NULL,               -- the base asset on 'all' rows
    asset VARCHAR NOT NULL,
    bucket_start TIMESTAMP NOT NULL,       -- 5 minutes
    taker_buy_base DOUBLE NOT NULL, taker_sell_base DOUBLE NOT NULL,
    taker_buy_usd DOUBLE NOT NULL, taker_sell_usd DOUBLE NOT NULL,
    n_buy BIGINT NOT NULL, n_sell BIGINT NOT NULL,
    forced_buy_base DOUBLE NOT NULL, forced_sell_base DOUBLE NOT NULL,   -- fills the venue forced
    forced_buy_usd DOUBLE NOT NULL, forced_sell_usd DOUBLE NOT NULL,
    n_forced BIGINT NOT NULL,
    n_unknown_side BIGINT NOT NULL, unknown_side_usd DOUBLE NOT NULL,
    delta_usd DOUBLE NOT NULL,
    delta_ex_forced_usd DOUBLE NOT NULL,
    cvd_usd DOUBLE NOT NULL,               -- anchored at the day's first bucket of the series
    cvd_ex_forced_usd DOUBLE NOT NULL,
    n_venues INTEGER NOT NULL,
    reconciled BOOLEAN NOT NULL,           -- compared with the venue's own 5-minute taker volume (raw.taker_volumes)
    venue_buy_volume DOUBLE, venue_sell_volume DOUBLE,   -- the venue's figures, base units
    rel_diff_buy DOUBLE, rel_diff_sell DOUBLE,           -- ours / venue - 1, base units
    reconcile_flagged BOOLEAN,             -- either side beyond 0.5 %
    day DATE NOT NULL
)"""

BASIS = """
CREATE TABLE IF NOT EXISTS analytics.basis (
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    asset VARCHAR NOT NULL,
    minute TIMESTAMP NOT NULL,
    mark_price DOUBLE,                     -- the minute's last mark
    index_price DOUBLE,                    -- the index as of that mark (at most 2 s older)
    premium DOUBLE,                        -- mark / index - 1 of the last pair, a fraction
    premium_twap DOUBLE,                   -- time-weighted over the minute
    premium_coverage DOUBLE,               -- share of the minute the premium samples cover
    basis_annualized DOUBLE,               -- premium_twap x 8760 (an hourly-persisting premium per year)
    mid_price DOUBLE,                      -- the minute's last book mid (analytics.book_depth)
    median_mid DOUBLE,                     -- median of the asset's markets' mids in the minute
    dislocation_bps DOUBLE,                -- (mid / median - 1) x 1e4; NULL with fewer than two markets
    n_markets_priced INTEGER,              -- markets of the asset with a mid in the minute
    day DATE NOT NULL
)"""


def slippage_columns() -> list[str]:
    """Per order size (``transforms.slippage.ORDER_SIZES_USD``) and side of ``analytics.slippage``."""
    columns = []
    for size in ORDER_SIZES_USD:
        label = size_label(size)
        for side in ("ask", "bid"):
            columns += [f"{side}_slippage_bps_{label} DOUBLE", f"{side}_too_shallow_{label} BOOLEAN",
                        f"{side}_book_truncated_{label} BOOLEAN"]
    return columns


def _slippage() -> str:
    sizes = ",\n    ".join(slippage_columns())
    return f"""CREATE TABLE IF NOT EXISTS analytics.slippage (
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    asset VARCHAR NOT NULL,
    minute TIMESTAMP NOT NULL,
    n_snapshots INTEGER NOT NULL,
    n_valid INTEGER NOT NULL,
    mid_mean DOUBLE,
    {sizes},
    day DATE NOT NULL
)"""


def depth_flag_columns() -> list[str]:
    """``analytics.book_depth``: per band and side, whether a valid book of the minute ended inside it."""
    return [f"{side}_exceeds_book_{band_label(band)}" for band in BANDS for side in ("bid", "ask")]


POSITIONING_STATEMENTS: list[str] = [
    "CREATE SCHEMA IF NOT EXISTS analytics",
    AGGREGATED_OPEN_INTEREST,
    AGGREGATED_FUNDING,
    TAKER_VOLUME,
    BASIS,
    _slippage(),
    *(f"ALTER TABLE analytics.book_depth ADD COLUMN IF NOT EXISTS {column} BOOLEAN" for column in depth_flag_columns()),
]
# Migration 12: the liquidation-level map, its score, cross-venue cascades (analytics.md §9.4, §6.3)
# and the varying-baseline Hawkes fit of liquidation_cascades.
LIQUIDATION_LEVELS = """
CREATE TABLE IF NOT EXISTS analytics.liquidation_levels (
    asset VARCHAR NOT NULL,
    snapshot_ts TIMESTAMP NOT NULL,        -- the map as of the end of this minute (hourly)
    side VARCHAR NOT NULL,                 -- the side liquidated at this level: 'long' | 'short'
    bin_lo DOUBLE NOT NULL,                -- price bucket [bin_lo, bin_hi)
    bin_hi DOUBLE NOT NULL,
    usd DOUBLE NOT NULL,                   -- modelled outstanding notional liquidated in the bucket
    mid DOUBLE NOT NULL,                   -- the VWAP the buckets are sized from (0.1 % of it)
    modeled_liquidated_usd DOUBLE NOT NULL,-- cumulative since the model's warm-up start
    unplaced_usd DOUBLE NOT NULL,          -- OI growth the model could not price or split
    day DATE NOT NULL
)"""

LIQUIDATION_LEVEL_SCORES = """
CREATE TABLE IF NOT EXISTS analytics.liquidation_level_scores (
    asset VARCHAR NOT NULL,
    day DATE NOT NULL,
    venue_set VARCHAR NOT NULL,            -- 'all' venues, or 'complete_feeds' (venues publishing every liquidation)
    score DOUBLE,                          -- realized USD share in the map's top-quartile buckets
    ci_low DOUBLE,                         -- bootstrap 95 % over snapshots
    ci_high DOUBLE,
    baseline DOUBLE NOT NULL,              -- 0.25: a map no better than chance
    lift DOUBLE,
    mean_ratio DOUBLE,                     -- mean of the per-snapshot shares
    precision_top10 DOUBLE,                -- share in the top 10 % (baseline 0.10)
    n_snapshots INTEGER NOT NULL,
    n_scored INTEGER NOT NULL,
    realized_usd DOUBLE NOT NULL,          -- the day's forced-order USD of the venue set
    realized_venues VARCHAR NOT NULL,      -- exchanges whose liquidations were scored
    is_sampled_feed BOOLEAN NOT NULL,      -- some scored liquidations come from a sampled feed
    coverage_note VARCHAR NOT NULL         -- each venue's liquidation coverage (meta.venue_coverage)
)"""

CROSS_VENUE_CASCADES = """
CREATE TABLE IF NOT EXISTS analytics.cross_venue_cascades (
    asset VARCHAR NOT NULL,
    side VARCHAR NOT NULL,                 -- liquidated side
    cascade_start TIMESTAMP NOT NULL,
    cascade_end TIMESTAMP NOT NULL,
    episode_usd DOUBLE NOT NULL,           -- all venues
    episode_orders INTEGER NOT NULL,
    reference_venue VARCHAR NOT NULL,      -- the price the episode was detected on
    exchange VARCHAR NOT NULL,             -- one row per venue
    venue_usd DOUBLE NOT NULL,
    venue_share DOUBLE,                    -- of the episode's published liquidated USD
    liquidation_coverage VARCHAR NOT NULL, -- the venue's (meta.venue_coverage): sampled shares are lower bounds
    first_liquidation TIMESTAMP,
    move_bps DOUBLE,                       -- signed extreme move over the episode
    threshold_crossing TIMESTAMP,          -- first time the venue's price moved the threshold
    crossing_after_first_s DOUBLE,         -- seconds after the first mover's crossing
    is_first_mover BOOLEAN NOT NULL,
    first_mover VARCHAR,
    lead_s DOUBLE,                         -- first mover's crossing ahead of the next venue's
    xcorr_lag_s DOUBLE,                    -- > 0: follows the reference venue by that long
    xcorr_peak DOUBLE,
    stress_max DOUBLE,                     -- analytics.market_stress over the episode
    stress_mean DOUBLE,
    day DATE NOT NULL
)"""

HAWKES_VARYING_BASELINE = [
    "ALTER TABLE analytics.liquidation_cascades ADD COLUMN IF NOT EXISTS hawkes_endogenous_share DOUBLE",
    "ALTER TABLE analytics.liquidation_cascades ADD COLUMN IF NOT EXISTS hawkes_baseline_bin_s DOUBLE",
]

LIQUIDATION_MAP_STATEMENTS: list[str] = [LIQUIDATION_LEVELS, LIQUIDATION_LEVEL_SCORES, CROSS_VENUE_CASCADES,
                                         *HAWKES_VARYING_BASELINE]

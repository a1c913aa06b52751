"""analytics.open_interest and analytics.funding: OI in coins and USD with CoinGlass-style change
percentages and cross-venue totals; funding normalised to 8 h, annualised and OI-weighted. Rows and
SQL: ``warehouse/analytics/derivatives.py``."""

import dagster as dg

from dagster_project.tables import (
    MICROSTRUCTURE,
    Picture,
    TableRun,
    covers_feed,
    no_duplicates,
    no_violations,
    table_asset,
    units_convertible,
)
from transforms import figures
from warehouse.analytics import derivatives

OPEN_INTEREST = ["analytics", "open_interest"]
FUNDING = ["analytics", "funding"]


@table_asset(
    MICROSTRUCTURE, "open_interest",
    deps=[dg.AssetKey(["raw", "open_interest"]), dg.AssetKey(["raw", "instruments"]), dg.AssetKey(["raw", "funding"])],
    checks=[
        covers_feed("Every exchange/symbol/5-minute bucket with a convertible OI observation has a 5m row.",
                    derivatives.OI_BUCKETS, "exchange, symbol, bucket_start", table_filter="grain = '5m'"),
        no_violations("values_in_range", "OI >= 0 in coins and USD, mark price > 0, n_venues >= 1.",
                      "open_interest < 0 OR open_interest_usd < 0 OR mark_price <= 0 OR n_venues < 1"),
        no_duplicates("exchange, symbol, grain, bucket_start",
                      description="One row per (exchange, symbol, grain, bucket_start)."),
        units_convertible("open_interest"),
    ],
    description="Open interest per exchange and symbol at 5-minute and hourly grain (analytics.md §7), in coins and "
                "USD with the mark price (raw.funding) as of the observation, at most 5 min old; where the venue "
                "pushes no mark price but publishes the OI's USD value (OKX), the price that value implies. "
                "Sizes convert with the market's instrument (warehouse.units): base units as they are; linear "
                "contracts coins = contracts × contract size, USD = coins × mark; inverse contracts USD = contracts "
                "× USD per contract (no price), coins = USD / mark. Contracts without an instrument are left out "
                "and counted by the `units_convertible` check. "
                "A bucket holds the last observation in it; the hourly row is the hour's last 5-minute row. "
                "`oi_change_pct_{5m,1h,4h,24h}` on coins and `oi_usd_change_pct_*` on USD: (OI_t − OI_t−w) / OI_t−w × "
                "100 against the bucket exactly w earlier (NULL if that bucket is missing). Cross-venue rows "
                "(exchange 'all', symbol = base asset) sum every market's latest bucket, carrying a market's value "
                "forward one bucket at most; n_venues says how many markets made the total. The previous 24 h are "
                "read for the change base.",
)
def open_interest(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: derivatives.open_interest_rows(run.con, start, end))
    metadata = {"preview": run.preview(["exchange", "symbol", "grain", "bucket_start", "open_interest",
                                        "open_interest_usd", "oi_change_pct_1h", "oi_change_pct_24h"],
                                       "grain DESC, exchange, symbol, bucket_start")}
    series = run.query(derivatives.OI_AND_PRICE_SERIES)
    if series:
        title = f"open interest (USD, all venues) and price, {run.start:%Y-%m-%d}"
        metadata["open_interest_and_price"] = Picture(title, figures.open_interest_and_price(series, title))
    return metadata


@table_asset(
    MICROSTRUCTURE, "funding",
    deps=[dg.AssetKey(["raw", "funding"]), dg.AssetKey(OPEN_INTEREST)],
    checks=[
        covers_feed("Every exchange/symbol/minute with a funding update has a row.", derivatives.FUNDING_RATE_MINUTES,
                    "exchange, symbol, minute"),
        no_violations("values_in_range", "|8 h rate| <= 5 %, annualized = 8 h rate × 1095, interval > 0, OI weight "
                                         ">= 0.",
                      "abs(rate_8h) > 0.05 OR interval_hours <= 0 OR oi_usd < 0 "
                      "OR abs(rate_annualized - rate_8h * 1095) > 1e-12"),
        no_duplicates("exchange, symbol, minute", description="One row per (exchange, symbol, minute)."),
    ],
    description="Funding per exchange, symbol and minute (analytics.md §7): the minute's last published rate "
                "(Binance: the running estimate of markPriceUpdate; `is_realised` marks settled rates), rate_8h = "
                "rate × 8 / interval_hours, rate_annualized = rate_8h × 3 × 365 (simple, a fraction). Cross-venue "
                "rows (exchange 'all', symbol = base asset): Σ rate_8h·OI / Σ OI over the markets with a rate that "
                "minute, OI = the USD open interest of analytics.open_interest known when the minute closes (at most "
                "10 min old); markets without OI carry no weight; `oi_usd` is the weight used and n_venues the "
                "markets.",
)
def funding(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: derivatives.funding_rows(run.con, start, end))
    metadata = {"preview": run.preview(["exchange", "symbol", "minute", "funding_rate", "interval_hours", "rate_8h",
                                        "rate_annualized", "oi_usd"], "exchange, symbol, minute")}
    series = run.query(derivatives.FUNDING_ANNUALIZED_PCT_SERIES)
    if series:
        title = f"funding, annualized %, {run.start:%Y-%m-%d}"
        metadata["funding_annualized_pct"] = Picture(title, figures.lines(series, title))
    return metadata

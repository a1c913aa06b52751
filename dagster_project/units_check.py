"""The check every asset that sums sizes from raw rows carries (warehouse.units): rows whose size
cannot be converted to base units and USD (contracts of a market without an instrument row or
contract size) are left out of the sums, and counted here rather than dropped silently."""

import dagster as dg

from warehouse.units import UnconvertibleRows

UNITS_CHECK = {
    "units_convertible": "Every sized raw row read converts to base units and USD (warehouse.units). Rows in "
                         "contracts whose market has no instrument (or a NULL/0 contract size) are left out of the "
                         "sums; this check counts them (`unconvertible_rows`) and names the markets (warns).",
}


def units_check_result(found: UnconvertibleRows) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name="units_convertible", passed=found.rows == 0,
                               severity=dg.AssetCheckSeverity.WARN,
                               metadata={"unconvertible_rows": found.rows,
                                         "unconvertible_markets": ", ".join(found.markets) or "none"})

"""The microstructure assets (issues 4 and 11), in dependency order (registered in definitions.py)."""

from dagster_project.assets.microstructure_depth import (
                         book_depth,
                         liquidity_withdrawals,
)
from dagster_project.assets.microstructure_adl import adl_events
from dagster_project.assets.microstructure_derivatives import funding, open_interest
from dagster_project.assets.microstructure_liquidations import (
                         liquidation_cascades,
                         liquidations_1m,
)
from dagster_project.assets.microstructure_positioning import POSITIONING_ASSETS
from dagster_project.assets.microstructure_stress import market_stress

MICROSTRUCTURE_ASSETS = [book_depth, liquidity_withdrawals, open_interest, funding, liquidations_1m,
                         liquidation_cascades, market_stress, adl_events, *POSITIONING_ASSETS]

"""Local Binance USD-M futures simulator for testing perpflow's ingestors and analytics.

Real venues cannot be replayed on demand, do not fail when a test wants them to, and never say
what really happened (Binance samples liquidations, books are only visible through the feed).
This package is a venue that does all three: it speaks Binance USD-M's exact wire format
(routed websocket paths, depth U/u/pu sequencing, REST snapshots with request weights), its
market comes from a deterministic mechanistic model that can replay a 2025-10-10-style leverage
cascade, it injects faults on a schedule, and it writes the unsampled ground truth to a file.

Entry points:

* ``Simulator`` (async context manager) / ``SimulatorThread``: the server on a local port;
* ``ExchangeFeed`` / ``iter_messages``: the same message stream and REST bodies offline;
* ``ingest.simulator.cli.simulate``: the ``simulate`` click command (``python -m ingest.simulator``);
* ``load_truth``: read a ground-truth file (format in ``ingest.simulator.truth``).
"""

from .config import (DEFAULT_SYMBOLS, SCENARIOS, SYMBOL_SPECS, ConfigError, FaultConfig, OutageSpec,
                     SimConfig, StallSpec, SymbolSpec)
from .faults import MalformedFrame
from .feed import ExchangeFeed, Message, UnknownSymbol, iter_messages
from .server import Simulator, SimulatorThread
from .truth import load_truth

__all__ = [
    "DEFAULT_SYMBOLS", "SCENARIOS", "SYMBOL_SPECS", "ConfigError", "ExchangeFeed", "FaultConfig",
    "MalformedFrame", "Message", "OutageSpec", "SimConfig", "Simulator", "SimulatorThread", "StallSpec", "SymbolSpec",
    "UnknownSymbol", "iter_messages", "load_truth",
]

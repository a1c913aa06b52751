"""``python -m ingest.simulator``: the ``simulate`` command without the main perpflow CLI."""

from .cli import simulate

simulate(prog_name="python -m ingest.simulator")

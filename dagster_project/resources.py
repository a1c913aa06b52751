"""Dagster resources: thin wrappers over the warehouse store and the Kafka settings."""

import time

import dagster as dg

from warehouse.settings import load_settings
from warehouse.store import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse: writer (locked, live file), reader (replica), replica publishing."""

    database: str
    replica: str
    replica_min_interval_s: float = 60.0

    def get(self) -> Warehouse:
        return Warehouse(self.database, self.replica)

    def publish_replica_if_due(self, force: bool = False) -> float | None:
        """Publish unless a replica younger than the interval exists; None when skipped."""
        warehouse = self.get()
        path = warehouse.replica_path
        if not force and path.exists() and time.time() - path.stat().st_mtime < self.replica_min_interval_s:
            return None
        return warehouse.publish_replica()


class KafkaResource(dg.ConfigurableResource):
    bootstrap: str


def default_resources() -> dict:
    settings = load_settings()
    return {
        "warehouse": WarehouseResource(database=str(settings.warehouse_path), replica=str(settings.replica_path)),
        "kafka": KafkaResource(bootstrap=settings.bootstrap),
    }

"""The SQL and row building of the analytics tables, one plain module per area: functions taking a
DuckDB connection and a window of UTC days and returning the rows to write (Arrow tables or a
SELECT). Dagster wiring (``dagster_project/assets/``) declares the tables and calls them."""

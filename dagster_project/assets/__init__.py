"""Perpflow's assets, one module per family, each table declared with ``dagster_project.tables.table_asset``
(see that module and ARCHITECTURE.md, "Adding an analytics table"): the declaration, its checks and its
metadata here; its SQL and rows in ``warehouse/analytics/<area>.py``; its pictures in ``transforms/figures.py``.
A family module lists its assets (``MICROSTRUCTURE_ASSETS``, ``QUANT_ASSETS``), and ``definitions.py`` loads them.
"""

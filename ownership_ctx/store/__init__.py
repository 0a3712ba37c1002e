"""The event store: tables defined once, SQL per dialect generated from them, a shared SQLite /
PostgreSQL base, and the typed query API — the only place in ownership_ctx that speaks SQL.

- `ownership_ctx.store.tables`: the tables, dimensions, measures and rollup tiers;
- `ownership_ctx.store.dialect`: the SQL of each dialect, generated from them;
- `ownership_ctx.store.api`: the typed query API (`EventQueries`) and its result types;
- `SQLiteStore`, `PostgresStore`: writers (``write_batch``) and readers, sharing `StoreBase`.

Open one by URL with `ownership_ctx.sinks.open_store` (reading and writing) or
`ownership_ctx.sinks.open_reader` (read-only, checked now, errors as `StoreError`).
"""

from __future__ import annotations

from .api import (
    DIMENSIONS,
    MEASURES,
    TIME_DIMENSIONS,
    EventQueries,
    LossShape,
    RollupRow,
    ShapeStep,
    StoreError,
    TraceSpend,
    TraceStep,
    UnattributedCalls,
)
from .base import StoreBase
from .postgres import PostgresStore
from .rows import split_rows
from .sqlite import SQLiteStore

__all__ = [
    "DIMENSIONS",
    "MEASURES",
    "TIME_DIMENSIONS",
    "EventQueries",
    "LossShape",
    "PostgresStore",
    "RollupRow",
    "SQLiteStore",
    "ShapeStep",
    "StoreBase",
    "StoreError",
    "TraceSpend",
    "TraceStep",
    "UnattributedCalls",
    "split_rows",
]

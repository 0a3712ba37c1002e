"""Spend already in the event store, for rebuilding counters and for ``ownership-ctx budgets``.

Reads the store's hourly rollups (periods start on the hour, so whole buckets add up to a
period exactly). Anything with a ``rollups(start, end, group_by=..., where=...)`` method whose
rows have ``group`` and ``cost`` works: the store's query API, or a test double.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

__all__ = ["Rollups", "StoreSpend"]


class Rollups(Protocol):
    def rollups(
        self,
        start: float,
        end: float,
        group_by: Sequence[str] = (),
        where: Mapping[str, str | None] | None = None,
    ) -> Sequence[Any]: ...


class StoreSpend:
    """`SpendSource` over the event store's rollups: a store object, or a URL opened (read
    only) at first use. A store that cannot be read yet (no events written so far) raises
    there; the engine logs that once and tries again at its next refresh."""

    def __init__(self, store: Rollups | None = None, *, url: str | None = None) -> None:
        if store is None and url is None:
            raise ValueError("StoreSpend needs a store or a url")
        self.store = store
        self.url = url

    @classmethod
    def open(cls, url: str) -> StoreSpend:
        return cls(url=url)

    def _rollups(self) -> Rollups:
        if self.store is None:
            from ..sinks import open_reader

            self.store = open_reader(self.url)
        return self.store

    def spend(
        self, match: Mapping[str, str], each: Sequence[str], start: float, end: float
    ) -> dict[tuple[str | None, ...], Decimal]:
        rows = self._rollups().rollups(start, end, group_by=tuple(each), where=dict(match))
        out: dict[tuple[str | None, ...], Decimal] = {}
        for row in rows:
            key = tuple(row.group.get(name) for name in each)
            out[key] = out.get(key, Decimal(0)) + Decimal(row.cost)
        return out

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

"""Reports over the event store: chargeback, coverage, audit, trace, anomaly and an HTML page.

Each report is a pure function of the store's typed query API
(`ownership_ctx.store.EventQueries`: a store opened by URL with `open_source`) and a `TimeRange`,
returning a typed result with exact `Decimal` money; ``result.document()`` renders it as a
terminal table, CSV or JSON (`render`). The ``ownership-ctx`` command (`ownership_ctx.cli`)
is a thin layer over these.

.. code-block:: python

    from ownership_ctx.reports import open_source, parse_range, chargeback, render

    with open_source("sqlite:///ownership.db") as source:
        result = chargeback(source, parse_range("7d", None), by=("team", "model"))
        print(render(result.document(), "table"))
"""

from __future__ import annotations

from ownership_ctx.sinks.config import open_reader
from ownership_ctx.store.api import EventQueries, StoreError

from .anomaly import Anomaly, PeriodStats, anomaly, decompose
from .audit import Audit, audit
from .chargeback import Chargeback, ChargebackRow, chargeback, parse_by
from .coverage import Coverage, coverage, parse_threshold
from .focus import focus_csv
from .html import build_report, render_html
from .rendering import Document, render
from .timerange import TimeRange, UsageError, parse_period, parse_range
from .trace import TraceReport, trace_report

#: What every report reads (the store's typed query API).
Source = EventQueries
#: Open a store by URL for reports: read-only, checked now, `StoreError` when it cannot be read.
open_source = open_reader

__all__ = [
    "Anomaly",
    "Audit",
    "Chargeback",
    "ChargebackRow",
    "Coverage",
    "Document",
    "PeriodStats",
    "Source",
    "StoreError",
    "TimeRange",
    "TraceReport",
    "UsageError",
    "anomaly",
    "audit",
    "build_report",
    "chargeback",
    "coverage",
    "decompose",
    "focus_csv",
    "open_source",
    "parse_by",
    "parse_period",
    "parse_range",
    "parse_threshold",
    "render",
    "render_html",
    "trace_report",
]

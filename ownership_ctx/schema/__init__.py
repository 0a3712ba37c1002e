"""The data contract, standard library only: the event kinds as typed structures with their
keys (`ownership_ctx.schema.events`), money in and out of `Decimal`
(`ownership_ctx.schema.money`), and the one JSON encoder (`ownership_ctx.schema.encoding`)."""

from __future__ import annotations

from . import events, money
from .encoding import encode_event, encode_json
from .events import BillRow, Event, HopEvent, ProviderCallEvent, RequestEvent

__all__ = [
    "BillRow",
    "Event",
    "HopEvent",
    "ProviderCallEvent",
    "RequestEvent",
    "encode_event",
    "encode_json",
    "events",
    "money",
]

"""Events as JSON text: the spool's lines (and the stores' JSON column)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

__all__ = ["Event", "encode_event"]

Event = Mapping[str, Any]


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")  # exact, never exponent notation (as JsonLinesSink writes)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    # Decimal costs, datetimes, enums, ...: their text form is what a reader wants.
    return str(value)


_ENCODE: Final = json.JSONEncoder(
    separators=(",", ":"), default=_default, skipkeys=True, ensure_ascii=False
).encode


def encode_event(event: Event) -> str:
    """One event as compact JSON; never raises (an unencodable event is stored as reprs)."""
    try:
        return _ENCODE(event)
    except Exception:
        # Circular references, exotic keys, a dict the host mutates meanwhile: keep what can
        # be kept rather than lose the event.
        try:
            items = list(event.items())
            return _ENCODE(
                {str(k): v if isinstance(v, (str, int, float)) else repr(v) for k, v in items}
            )
        except Exception:
            return _ENCODE({"event_id": str(event.get("event_id")), "problems": ["unencodable"]})

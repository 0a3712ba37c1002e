"""The one JSON encoder for events: spool lines, the stores' JSON bodies, JSON-lines files.

Rules, the same everywhere:

- compact (``{"a":1}``), UTF-8 text (no ``\\u`` escapes for non-ASCII);
- `Decimal` as its exact plain text (``"0.0000015"``), never a float;
- sets, frozensets and tuples as lists; other mappings as objects; any other value as ``str``;
- **NaN and infinities become ``null``** (JSON has no such numbers; SQLite's JSON functions
  and PostgreSQL's JSONB reject the ``NaN`` token that Python would write), as
  ``JSON.stringify`` does;
- non-string keys: str/int/float/bool/None keys as JSON does, others skipped.

`encode_json` raises on what cannot be encoded (a circular reference); `encode_event` never
raises: it falls back to ``repr`` values, then to the event id alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

__all__ = ["encode_event", "encode_json"]


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    # datetimes, enums, ...: their text form is what a reader wants.
    return str(value)


_ENCODER: Final = json.JSONEncoder(
    separators=(",", ":"), default=_default, skipkeys=True, ensure_ascii=False, allow_nan=False
)
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_STRICT: Callable[[Any], str] = _ENCODER.encode
if _c_make_encoder is not None:
    # The C encoder built once and called directly: JSONEncoder.encode builds one per call,
    # a fifth of the time of a typical event. Same settings as _ENCODER, but no circular
    # reference check: those end in RecursionError, reported as the ValueError _ENCODER gives.
    _C_ENCODE: Final = _c_make_encoder(
        None, _default, json.encoder.encode_basestring, None, ":", ",", False, True, False
    )

    def _encode_c(value: Any) -> str:
        return "".join(_C_ENCODE(value, 0))

    _STRICT = _encode_c


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (containers rebuilt)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_finite(v) for v in value]
    return value


def encode_json(value: Any) -> str:
    """``value`` as compact JSON by the rules above. Raises `ValueError` / `TypeError` on
    what JSON cannot hold at all (circular references)."""
    try:
        return _STRICT(value)
    except RecursionError:
        raise ValueError("Circular reference detected") from None
    except ValueError as e:
        if "Out of range float" not in str(e):
            raise
    # Rare: a NaN or infinity somewhere. The strict C encoder stays the fast path.
    try:
        return _STRICT(_finite(value))
    except RecursionError:
        raise ValueError("Circular reference detected") from None


def encode_event(event: Mapping[str, Any]) -> str:
    """One event as compact JSON; never raises (an unencodable event is kept as reprs)."""
    try:
        return encode_json(event)
    except Exception:
        # Circular references, exotic keys, a dict the host mutates meanwhile: keep what can
        # be kept rather than lose the event.
        try:
            items = list(event.items())
            return encode_json(
                {str(k): v if isinstance(v, (str, int, float)) else repr(v) for k, v in items}
            )
        except Exception:
            return encode_json(
                {"event_id": str(event.get("event_id")), "problems": ["unencodable"]}
            )

"""Unit names: what events and logs call a unit of work, never the data a path carries.

A request path holds identifiers (``/users/jane@acme.example/orders``); events, logs and
reports must not. Adapters name an HTTP unit by the framework's route template when one is
known, else by `redact_path`, else by the operator's own ``unit_of`` function.

Standard library only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Final

from . import events

__all__ = ["REDACTED", "redact_path", "shown", "unit_name"]

logger = logging.getLogger("ownership_ctx")

#: What an identifier-like path segment becomes.
REDACTED: Final = "{id}"

_MAX_SEGMENT: Final = 64  # longer segments are data, whatever they look like
_MAX_SHOWN: Final = 256  # a redacted path is bounded too (a client chooses its length)
_CACHE_SIZE: Final = 4096
_CACHEABLE: Final = 512

_IDENTIFIER = re.compile(
    r"""
      .*[0-9]{4}.*                                                # a run of 4+ digits
    | [0-9]+                                                      # digits
    | [0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}  # a UUID
    | [0-9a-f]{16,}                                               # long hex
    | .*(?:@|%40).*                                               # an email, a handle
    """,
    re.VERBOSE | re.IGNORECASE | re.DOTALL,
)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.~+=-]+")
_cache: dict[str, str] = {}


def _is_identifier(segment: str) -> bool:
    if len(segment) > _MAX_SEGMENT:
        return True
    if _IDENTIFIER.fullmatch(segment):
        return True
    # A long opaque token (base64url, a JWT, an API key): letters and digits mixed.
    return (
        len(segment) >= 16
        and _TOKEN_CHARS.fullmatch(segment) is not None
        and sum(c.isdigit() for c in segment) >= 2
    )


def redact_path(path: str) -> str:
    """``path`` with every segment that looks like an identifier replaced by ``{id}``.

    Identifier-like: digits (or a run of 4+ digits anywhere), a UUID, 16+ hex characters,
    anything with ``@``, a long opaque token (16+ token characters with digits among
    letters), any segment over 64 characters. ``/users/jane@acme.example/orders/42`` becomes
    ``/users/{id}/orders/{id}``. The result is at most 256 characters.
    """
    redacted = _cache.get(path)
    if redacted is not None:
        return redacted
    segments = path.split("/")
    redacted = "/".join(REDACTED if s and _is_identifier(s) else s for s in segments)
    redacted = shown(redacted)
    if len(path) <= _CACHEABLE:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[path] = redacted
    return redacted


def shown(name: str) -> str:
    """``name`` bounded to 256 characters (cut with an ellipsis) for logs and events: units
    are request paths too, and a client chooses their length."""
    return name if len(name) <= _MAX_SHOWN else name[: _MAX_SHOWN - 1] + "…"


_unit_of_failed: list[bool] = []


def unit_name(unit_of: Callable[[Any], object], native: object, path: str) -> str:
    """The operator's ``unit_of(native)`` (an ASGI scope, a WSGI environ), else the redacted
    ``path``: a broken ``unit_of`` must never fail the request, and is logged once."""
    try:
        name = unit_of(native)
    except Exception:
        events.count("unit_of_errors")
        if not _unit_of_failed:  # once: a broken unit_of fails on every request
            _unit_of_failed.append(True)
            logger.exception("ownership_ctx: unit_of raised; the redacted path is used instead")
        return redact_path(path)
    return name if isinstance(name, str) else redact_path(path)

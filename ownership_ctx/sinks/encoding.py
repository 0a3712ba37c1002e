"""Events as the pipeline moves them (any mapping) and as the spool writes them: JSON lines
through the package's one encoder (`ownership_ctx.schema.encode_event`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ownership_ctx.schema import encode_event

__all__ = ["Event", "encode_event"]

Event = Mapping[str, Any]

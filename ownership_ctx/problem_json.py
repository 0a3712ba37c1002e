"""The body of a refusal: an RFC 9457 ``application/problem+json`` document.

It names fields and rules, never the values that were received. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Final

from .envelope import Problem

__all__ = ["PROBLEM_CONTENT_TYPE", "rejection_body"]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


def rejection_body(
    *,
    missing: Sequence[str],
    problems: Iterable[Problem],
    reasons: Sequence[str],
    trace_id: str,
) -> bytes:
    """Why a unit of work was rejected: ``missing`` required fields, the ``invalid`` problems
    (field, code, rule) and the human-readable ``reasons`` joined as the detail."""
    invalid = [p for p in problems if p.severity == "invalid"]
    document = {
        "type": "about:blank",
        "title": "Ownership envelope rejected",
        "status": 400,
        "detail": "; ".join(reasons) or "no ownership envelope",
        "missing": list(missing),
        "invalid": [{"field": p.field, "code": p.code, "rule": p.detail} for p in invalid],
        "trace_id": trace_id,
    }
    return json.dumps(document).encode()

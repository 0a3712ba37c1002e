"""`JsonLinesSink`: append each event as one JSON line to a file.

It never raises into the host: a failed write is counted (``events.stats["jsonl_sink_errors"]``)
and the event dropped. Lines are written by the one event encoder
(`ownership_ctx.schema.encoding`): ``Decimal`` as its exact decimal text, NaN and infinities as
``null``, other values JSON cannot hold as strings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .. import events
from ..schema.encoding import encode_json

__all__ = ["JsonLinesSink", "to_json"]


def to_json(event: Mapping[str, Any]) -> str:
    """One event as compact JSON (`ownership_ctx.schema.encoding.encode_json`)."""
    return encode_json(event)


class JsonLinesSink:
    """Appends events to ``path`` (created with its parent directory), flushed per event."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        return self._file

    def emit(self, event: Mapping[str, Any]) -> None:
        try:
            line = to_json(event) + "\n"
            with self._lock:
                f = self._open()
                f.write(line)
                f.flush()
        except Exception:
            events.count("jsonl_sink_errors")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except Exception:
                    events.count("jsonl_sink_errors")
                self._file = None

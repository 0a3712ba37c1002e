"""provider_call events as OpenTelemetry log records, for users who already run a collector.

`OtelLogExporter` is a pipeline backend: each provider_call event becomes one log record
(event name ``ownership_ctx.provider_call``) on the global (or given) ``LoggerProvider``, with

- ``gen_ai.*`` and ``error.type`` attributes exactly as the event names them (the GenAI
  semantic conventions), and
- ``ownership.*`` for everything else: the envelope (``ownership.owner_team``,
  ``ownership.workflow_id``, ``ownership.feature``, ``ownership.tenant``, ``ownership.user``,
  ``ownership.attribution``, ``ownership.trace_id``, ``ownership.extra.<key>``) and the
  metering fields (``ownership.cost`` as the exact decimal string plus ``ownership.cost_usd``
  as a number to sum, ``ownership.attempt``, ``ownership.service_tier``, ...).

The record carries the envelope's trace id, so backends join it to the request's spans.
`span_event` does the same on a span, for code that would rather add span events on the
caller's path. Requires ``opentelemetry-api`` (the ``otel`` extra); the SDK and exporters are
the user's own configuration.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Final

__all__ = ["EVENT_NAME", "OtelLogExporter", "attributes_of", "span_event"]

EVENT_NAME: Final = "ownership_ctx.provider_call"

_ENVELOPE: Final = frozenset(
    {"trace_id", "owner_team", "workflow_id", "feature", "tenant", "user", "attribution"}
)
_SKIP: Final = frozenset({"kind", "ts"})  # ts is the record's timestamp


def _value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return json.dumps(value, default=str, separators=(",", ":"))


def attributes_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenTelemetry attributes of one event (``None`` values left out)."""
    out: dict[str, Any] = {}
    for key, value in event.items():
        if value is None or key in _SKIP:
            continue
        if key.startswith("gen_ai.") or key == "error.type":
            out[key] = _value(value)
        else:
            out["ownership." + key] = _value(value)
    cost = event.get("cost")
    if cost is not None:
        with contextlib.suppress(TypeError, ValueError):
            out["ownership.cost_usd"] = float(cost)
    return out


def _trace_id(event: Mapping[str, Any]) -> int | None:
    value = event.get("trace_id")
    if isinstance(value, str) and len(value) == 32:
        try:
            return int(value, 16) or None
        except ValueError:
            return None
    return None


class OtelLogExporter:
    """Pipeline backend: provider_call events (or ``kinds``) -> OpenTelemetry log records."""

    def __init__(
        self,
        logger_provider: Any = None,
        *,
        kinds: Iterable[str] = ("provider_call",),
        logger_name: str = "ownership_ctx",
    ) -> None:
        self.logger_provider = logger_provider
        self.kinds = frozenset(kinds)
        self.logger_name = logger_name
        self._logger: Any = None

    def _get_logger(self) -> Any:
        if self._logger is None:
            from opentelemetry import _logs

            provider = self.logger_provider or _logs.get_logger_provider()
            self._logger = provider.get_logger(self.logger_name)
        return self._logger

    def write_batch(self, events: list[Mapping[str, Any]]) -> None:
        from opentelemetry._logs import LogRecord, SeverityNumber

        logger = self._get_logger()
        for event in events:
            if event.get("kind") not in self.kinds:
                continue
            ts = event.get("ts")
            timestamp = int(ts * 1e9) if isinstance(ts, (int, float)) else None
            fields: dict[str, Any] = {
                "timestamp": timestamp,
                "observed_timestamp": timestamp,
                "trace_id": _trace_id(event),
                "severity_number": SeverityNumber.INFO,
                "severity_text": "INFO",
                "body": f"{event.get('kind')} {event.get('gen_ai.response.model') or ''}".strip(),
                "attributes": attributes_of(event),
            }
            try:
                record = LogRecord(**fields, event_name=EVENT_NAME)
            except TypeError:  # opentelemetry-api before event names on records
                fields["attributes"]["event.name"] = EVENT_NAME
                record = LogRecord(**fields)
            logger.emit(record)

    def close(self) -> None:
        provider = self.logger_provider
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush()


def span_event(span: Any, event: Mapping[str, Any]) -> None:
    """Add ``event`` to ``span`` as a span event named after its kind (caller's path)."""
    span.add_event(f"ownership_ctx.{event.get('kind', 'event')}", attributes_of(event))

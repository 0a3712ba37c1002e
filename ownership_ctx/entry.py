"""`Entry`: one unit of work admitted by a gate, bound until it is closed. Standard library only."""

from __future__ import annotations

from contextvars import Token
from types import TracebackType
from typing import Any

from . import events
from .context import envelope_var
from .decision import Decision, Outcome
from .envelope import Envelope, Problem
from .hop_events import request_event
from .problem_json import rejection_body

__all__ = ["Entry", "open_entry"]


class Entry:
    """One unit of work that crossed into this process. Close it when the unit is finished.

    ``envelope`` is what was bound (``None`` when the unit was rejected). ``problems`` says why
    parts of the incoming envelope were not used, without echoing raw values.
    """

    __slots__ = ("_decision", "_token", "envelope", "hop", "trace_id", "unit")

    def __init__(
        self,
        envelope: Envelope | None,
        decision: Decision,
        trace_id: str,
        hop: str,
        unit: str,
    ) -> None:
        self.envelope = envelope
        self._decision = decision
        self.trace_id = trace_id
        self.hop = hop
        self.unit = unit
        self._token: Token[Envelope | None] | None = envelope_var.set(envelope)

    @property
    def decision(self) -> Decision:
        """What the policy decided (shared by every unit with the same carrier)."""
        return self._decision

    @property
    def outcome(self) -> Outcome:
        return self._decision.outcome

    @property
    def missing(self) -> tuple[str, ...]:
        """Required fields that were not supplied (and, in stamp mode, had no default)."""
        return self._decision.missing

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self._decision.problems

    @property
    def rejected(self) -> bool:
        return self.outcome == "rejected"

    def reasons(self) -> list[str]:
        """Human-readable reasons (missing fields, then problems); safe to show to a client."""
        out = [f"{name}: missing (required here)" for name in self.missing]
        out.extend(str(p) for p in self.problems if p.severity == "invalid")
        return out

    def problem_body(self) -> bytes:
        """An RFC 9457 ``application/problem+json`` body saying why the unit was rejected.

        It names fields and rules, never the values that were received.
        """
        return rejection_body(
            missing=self.missing,
            problems=self.problems,
            reasons=self.reasons(),
            trace_id=self.trace_id,
        )

    def request_event(
        self, method: str, status: int | None, latency_ms: float, route: str | None = None
    ) -> dict[str, Any]:
        """The ``request`` event of an edge unit (the parent of its provider calls).

        ``route``: the framework's route template (``/users/{id}``) when it is known; it keeps
        identifiers that paths carry out of the store, and groups requests usefully.
        """
        return request_event(self, method, status, latency_ms, route)

    def close(self) -> None:
        """Unbind the envelope. Idempotent; safe to call from the code that entered."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            envelope_var.reset(token)
        except ValueError:
            # Closed from another context (a framework that runs its end-of-task hook
            # elsewhere): that context never saw our binding, so there is nothing to undo.
            events.count("close_from_other_context")

    def __enter__(self) -> Entry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_new = object.__new__


def open_entry(
    envelope: Envelope | None, decision: Decision, trace_id: str, hop: str, unit: str
) -> Entry:
    """Bind ``envelope`` and return the `Entry` that unbinds it: ``Entry(...)`` written out,
    since the gate makes one per unit of work and a class call costs more than a function's."""
    entry = _new(Entry)
    entry.envelope = envelope
    entry._decision = decision
    entry.trace_id = trace_id
    entry.hop = hop
    entry.unit = unit
    entry._token = envelope_var.set(envelope)
    return entry

"""The crossing API: the only thing a framework adapter talks to.

On the way in, `Gate.enter` takes a carrier (a mapping of header names to strings) and where we
are, and does extract -> verify -> apply policy -> bind -> record the hop. It returns an `Entry`
that ends the unit of work (`Entry.close` resets the binding). On the way out, `Gate.inject`
writes the current envelope into a carrier. Adapters translate their framework's carrier and
lifecycle to these two calls and do nothing else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping
from contextvars import Token
from types import TracebackType
from typing import Any, Final, Literal

from . import events
from .codec import (
    BAGGAGE_HEADER,
    QUEUE_HEADER,
    TRACEPARENT_HEADER,
    encode,
    encode_header,
    new_trace_id,
    parse,
    trace_id_from_traceparent,
)
from .context import _envelope
from .envelope import (
    ATTRIBUTIONS,
    _assemble,
    HASHED_FIELDS,
    Attribution,
    Envelope,
    Problem,
    check_extra,
    check_field,
)
from .hashing import Keys
from .policy import Inbound, Policy

__all__ = ["BAGGAGE_HEADER", "PROBLEM_CONTENT_TYPE", "QUEUE_HEADER", "Entry", "Gate", "Outcome"]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

logger = logging.getLogger("ownership_ctx")

Outcome = Literal["attributed", "stamped", "quarantined", "unattributed", "rejected"]
_RANK: Final = {name: rank for rank, name in enumerate(ATTRIBUTIONS)}
_MAX_RAW_ID: Final = 256  # longer raw ids at the edge are refused rather than hashed


def _missing(required: tuple[str, ...], fields: Mapping[str, str]) -> tuple[str, ...]:
    for name in required:
        if name not in fields:
            return tuple(n for n in required if n not in fields)
    return ()


def _any_invalid(problems: list[Problem]) -> bool:
    return any(p.severity == "invalid" for p in problems)


class Entry:
    """One unit of work that crossed into this process. Close it when the unit is finished.

    ``envelope`` is what was bound (``None`` when the unit was rejected). ``problems`` says why
    parts of the incoming envelope were not used, without echoing raw values.
    """

    __slots__ = ("envelope", "hop", "missing", "outcome", "problems", "trace_id", "unit", "_token")

    def __init__(
        self,
        envelope: Envelope | None,
        outcome: Outcome,
        trace_id: str,
        hop: str,
        unit: str,
        missing: tuple[str, ...],
        problems: tuple[Problem, ...],
    ) -> None:
        self.envelope = envelope
        self.outcome = outcome
        self.trace_id = trace_id
        self.hop = hop
        self.unit = unit
        self.missing = missing
        self.problems = problems
        self._token: Token[Envelope | None] | None = _envelope.set(envelope)

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
        invalid = [p for p in self.problems if p.severity == "invalid"]
        document = {
            "type": "about:blank",
            "title": "Ownership envelope rejected",
            "status": 400,
            "detail": "; ".join(self.reasons()) or "no ownership envelope",
            "missing": list(self.missing),
            "invalid": [{"field": p.field, "code": p.code, "rule": p.detail} for p in invalid],
            "trace_id": self.trace_id,
        }
        return json.dumps(document).encode()

    def close(self) -> None:
        """Unbind the envelope. Idempotent; safe to call from the code that entered."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            _envelope.reset(token)
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


class Gate:
    """Policy and keys applied at one kind of boundary. Build one per adapter instance."""

    __slots__ = ("policy", "keys", "_edge_headers", "_extra_keys")

    def __init__(self, policy: Policy | None = None, keys: Keys | None = None) -> None:
        self.policy = policy if policy is not None else Policy()
        self.keys = keys if keys is not None else Keys.from_env()
        headers = self.policy.edge_headers
        self._edge_headers = headers.items() if headers is not None else ()
        self._extra_keys = frozenset(self.policy.extra_keys)
        if any(name in HASHED_FIELDS for name, _ in self._edge_headers):
            self.keys.require_hash_key("accepting raw tenant/user headers at the edge")

    @property
    def edge_header_names(self) -> tuple[str, ...]:
        """The lowercased first-party header names this gate reads at the edge."""
        return tuple(header for _, header in self._edge_headers)

    def enter(
        self,
        carrier: Mapping[str, str],
        *,
        hop: str,
        unit: str,
        edge: bool = False,
        header: str = BAGGAGE_HEADER,
        native: object = None,
    ) -> Entry:
        """Admit one unit of work: decide its envelope under the policy and bind it.

        ``carrier[header]`` holds the envelope (``baggage`` on HTTP, `QUEUE_HEADER` on queues).
        At the ``edge``, first-party headers are read and raw ids hashed. A trace id comes from
        the envelope, else from ``traceparent``, else is minted. Never raises for bad input.
        """
        policy = self.policy
        unit_policy = policy.for_unit(unit)
        problems: list[Problem] = []
        extras: tuple[tuple[str, str], ...] = ()
        incoming: Attribution = "attributed"

        parsed = parse(carrier.get(header) or "")
        if parsed.present:
            trusted, problem = self._trust(parsed.entries, parsed.signature)
            if problem is not None:
                problems.append(problem)
        else:
            trusted = False
        if trusted:
            fields = dict(parsed.fields)
            if parsed.problems:
                problems.extend(parsed.problems)
            extras = parsed.extras
            incoming = parsed.attribution
            if extras and not self._extra_keys.issuperset(k for k, _ in extras):
                extras = tuple((k, v) for k, v in extras if k in self._extra_keys)
                problems.append(
                    Problem("undeclared_extra", None, "extra field not declared", "ignored")
                )
            trace_id = fields.pop("trace_id", None)
        else:
            fields = {}
            trace_id = None
        if trace_id is None:
            trace_id = trace_id_from_traceparent(carrier.get(TRACEPARENT_HEADER))
            if trace_id is None:
                trace_id = new_trace_id()

        if edge and self._edge_headers:
            self._read_edge_headers(carrier, fields, problems)
        if policy.resolver is not None:
            self._resolve(Inbound(carrier, hop, unit, native), fields, problems)

        mode = unit_policy.mode
        local: Attribution = "attributed"
        if mode == "stamp":
            extras, local = self._stamp(unit_policy.defaults, fields, extras)
        missing = _missing(unit_policy.required, fields)
        if missing or (problems and mode != "stamp" and _any_invalid(problems)):
            if mode == "enforce":
                return self._finish(None, "rejected", trace_id, hop, unit, missing, problems)
            local = "quarantined"
        attribution = incoming if _RANK[incoming] >= _RANK[local] else local
        envelope = _assemble(trace_id, fields, extras, attribution)
        return self._finish(envelope, attribution, trace_id, hop, unit, missing, problems)

    @staticmethod
    def _stamp(
        defaults: Mapping[str, str], fields: dict[str, str], extras: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[tuple[str, str], ...], Attribution]:
        stamped: Attribution = "attributed"
        for name, value in defaults.items():
            if name.startswith("extra."):
                key = name[6:]
                if all(k != key for k, _ in extras):
                    extras = tuple(sorted((*extras, (key, value))))
            elif name not in fields:
                fields[name] = value
                stamped = "stamped"
        return extras, stamped

    def inject(
        self, carrier: MutableMapping[str, str], *, header: str = BAGGAGE_HEADER
    ) -> tuple[Envelope, tuple[Problem, ...]]:
        """Write the current envelope into ``carrier`` (signed when keys can sign).

        With no envelope bound, a fresh one marked ``unattributed`` is written: the receiver
        learns that ownership was lost before this hop, and nobody else's envelope is reused.
        On ``baggage``, foreign entries are kept; elsewhere ``carrier[header]`` is replaced.
        """
        envelope = _envelope.get()
        if envelope is None:
            envelope = Envelope(trace_id=new_trace_id(), attribution="unattributed")
        if header == BAGGAGE_HEADER:
            return envelope, encode(envelope, carrier, self.keys)
        carrier[header] = encode_header(envelope, self.keys)
        return envelope, ()

    def _trust(
        self, entries: tuple[tuple[str, str], ...], signature: str | None
    ) -> tuple[bool, Problem | None]:
        trust = self.policy.trust
        if trust == "none":
            return False, Problem("untrusted", None, "incoming envelopes are not used here", "ignored")
        if signature is not None and self.keys.signing_keys:
            if not self.keys.verify(dict(entries), signature):
                return False, Problem("bad_signature", "sig", "signature does not verify")
            return True, None
        if trust == "signed":
            return False, Problem("unsigned", None, "only signed envelopes are trusted here", "ignored")
        return True, None

    def _read_edge_headers(
        self, carrier: Mapping[str, str], fields: dict[str, str], problems: list[Problem]
    ) -> None:
        found = False
        for name, header in self._edge_headers:
            value = carrier.get(header)
            if value is None:
                continue
            found = True
            if self.policy.trust != "all":
                continue
            value = value.strip()
            if name in HASHED_FIELDS and check_field(name, value) is not None:
                if not value or len(value) > _MAX_RAW_ID or not value.isprintable():
                    problems.append(
                        Problem("invalid", name, f"raw id must be 1-{_MAX_RAW_ID} printable characters")
                    )
                    continue
                value = self.keys.hash(value)
            problem = check_field(name, value)
            if problem is None:
                fields[name] = value
            else:
                problems.append(problem)
        if found and self.policy.trust != "all":
            problems.append(
                Problem("untrusted", None, "first-party headers are not trusted here", "ignored")
            )

    def _resolve(self, inbound: Inbound, fields: dict[str, str], problems: list[Problem]) -> None:
        resolver = self.policy.resolver
        assert resolver is not None
        try:
            resolved = resolver(inbound)
        except Exception:
            events.count("resolver_errors")
            logger.exception("ownership_ctx: resolver failed on %s %s", inbound.hop, inbound.unit)
            problems.append(Problem("resolver_error", None, "the resolver raised", "ignored"))
            return
        for name, value in (resolved or {}).items():
            if name in HASHED_FIELDS and check_field(name, value) is not None:
                if self.keys.hash_key is None:
                    events.count("unhashed_resolver_ids")
                    problems.append(Problem("raw_identifier", name, "no hash key to hash it"))
                    continue
                value = self.keys.hash(str(value))
            problem = check_field(name, value) if name != "trace_id" else Problem(
                "invalid", "trace_id", "a resolver cannot set the trace id"
            )
            if problem is None:
                fields[name] = value
            else:
                problems.append(problem)

    def _finish(
        self,
        envelope: Envelope | None,
        outcome: Outcome,
        trace_id: str,
        hop: str,
        unit: str,
        missing: tuple[str, ...],
        problems: list[Problem],
    ) -> Entry:
        entry = Entry(envelope, outcome, trace_id, hop, unit, missing, tuple(problems))
        if outcome != "attributed" or problems:
            self._report(entry)
        if events.get_sink() is not None:
            events.emit(_hop_event(entry))
        return entry

    def _report(self, entry: Entry) -> None:
        events.count(f"{entry.hop}_{entry.outcome}")
        invalid = [p for p in entry.problems if p.severity == "invalid"]
        if entry.outcome in ("attributed", "stamped") and not invalid:
            return
        level = logging.WARNING if invalid or entry.rejected else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "ownership envelope %s on %s %r: %s",
                entry.outcome,
                entry.hop,
                entry.unit,
                "; ".join(entry.reasons()) or "no ownership received",
                extra={"ownership_outcome": entry.outcome, "ownership_hop": entry.hop},
            )


def _hop_event(entry: Entry) -> dict[str, Any]:
    envelope = entry.envelope
    return {
        "kind": "hop",
        "hop": entry.hop,
        "unit": entry.unit,
        "outcome": entry.outcome,
        "trace_id": entry.trace_id,
        "missing": list(entry.missing),
        "problems": [f"{p.field or '-'}:{p.code}" for p in entry.problems],
        **(envelope.as_dict() if envelope is not None else {}),
    }

"""The crossing API: the only thing a framework adapter talks to.

On the way in, `Gate.enter` takes a carrier (a mapping of header names to strings) and where we
are, and does extract -> verify -> apply policy -> bind -> record the hop. It returns an `Entry`
that ends the unit of work (`Entry.close` resets the binding). On the way out, `Gate.inject`
writes the current envelope into a carrier. Adapters translate their framework's carrier and
lifecycle to these two calls and do nothing else.

The gate orchestrates; the parts are elsewhere: the decision is a pure function
(`ownership_ctx.decision`), which the gate caches per carrier; `ownership_ctx.entry` binds it;
`ownership_ctx.hop_events` and `ownership_ctx.problem_json` say what happened; a tracer's
hooks are in `ownership_ctx.hooks`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Final

from . import events
from .codec import (
    BAGGAGE_HEADER,
    QUEUE_HEADER,
    TRACE_ENTRY,
    TRACEPARENT_HEADER,
    common_traceparent,
    encode,
    encode_header,
    put_baggage,
    split_volatile,
    trace_id_from_traceparent,
    unattributed_encoder,
    verifies_volatile,
)
from .context import envelope_var
from .decision import Decision, Judge, Outcome, Resolved, decide, refusal
from .entry import Entry, open_entry
from .envelope import (
    HASHED_FIELDS,
    Envelope,
    Problem,
    assemble_checked,
    check_field,
    with_checked_trace_id,
)
from .hashing import Keys
from .hooks import installed as hooks
from .hooks import mint_trace_id, run_enter_hook, set_enter_hook, set_trace_id_source
from .hop_events import hop_event
from .policy import Inbound, Policy
from .problem_json import PROBLEM_CONTENT_TYPE
from .units import shown

__all__ = [
    "set_enter_hook",
    "set_trace_id_source",
    "BAGGAGE_HEADER",
    "PROBLEM_CONTENT_TYPE",
    "QUEUE_HEADER",
    "Entry",
    "Gate",
    "Outcome",
]

logger = logging.getLogger("ownership_ctx")

_DECISION_CACHE_SIZE: Final = 2048  # so the cache stays under ~4 MiB of keys
_CACHEABLE_CHARS: Final = 2048
_SET_ASIDE: Final = frozenset({"unsigned", "untrusted"})  # ignored problems worth a log line


class Gate:
    """Policy and keys applied at one kind of boundary. Build one per adapter instance."""

    __slots__ = (
        "_can_verify",
        "_decisions",
        "_edge_names",
        "_for_unit",
        "_judge",
        "_refusals_logged",
        "_resolver",
        "_unattributed_header",
        "keys",
        "policy",
    )

    def __init__(self, policy: Policy | None = None, keys: Keys | None = None) -> None:
        self.policy = policy if policy is not None else Policy()
        self.keys = keys if keys is not None else Keys.from_env()
        self._judge = Judge(self.policy, self.keys)
        self._edge_names = tuple(header for _, header in self._judge.edge_headers)
        # Decisions of carriers seen before: see `enter`.
        self._decisions: dict[tuple[object, ...], Decision] = {}
        self._refusals_logged: set[str] = set()
        # Policy and Keys are frozen: what every admission asks of them, looked up once.
        self._resolver = self.policy.resolver
        self._can_verify = bool(self.keys.signing_keys)
        self._for_unit = self.policy.for_unit
        self._unattributed_header = unattributed_encoder(self.keys)
        if any(name in HASHED_FIELDS for name, _ in self._judge.edge_headers):
            self.keys.require_hash_key("accepting raw tenant/user headers at the edge")

    @property
    def edge_header_names(self) -> tuple[str, ...]:
        """The lowercased first-party header names this gate reads at the edge."""
        return self._edge_names

    @property
    def edge_carrier_names(self) -> tuple[str, ...] | None:
        """The request headers an edge adapter must put in the carrier, lowercased; ``None``:
        all of them (a resolver may look at any header, an API key or a token)."""
        if self.policy.resolver is not None:
            return None
        return (BAGGAGE_HEADER, TRACEPARENT_HEADER, *self._edge_names)

    def enter(
        self,
        carrier: Mapping[str, str],
        *,
        hop: str,
        unit: str,
        edge: bool = False,
        header: str = BAGGAGE_HEADER,
        native: object = None,
        name: str | None = None,
    ) -> Entry:
        """Admit one unit of work: decide its envelope under the policy and bind it.

        ``carrier[header]`` holds the envelope (``baggage`` on HTTP, `QUEUE_HEADER` on queues).
        At the ``edge``, first-party headers are read and raw ids hashed. A trace id comes from
        the envelope, else from ``traceparent``, else is minted. Never raises for bad input.
        ``unit`` is what policy rules match (an HTTP path, a task name); ``name`` is what
        events, logs and the resolver see instead when ``unit`` may carry data (a path with
        ids in it: see `ownership_ctx.units.redact_path`).
        """
        if name is None:
            name = unit
        text = carrier.get(header) or ""
        trace_id: str | None = None
        judge = self._judge
        if self._resolver is not None:
            resolved = self._resolve(Inbound(carrier, hop, name, native))
            decision = decide(judge, text, carrier, unit=unit, edge=edge, resolved=resolved)
        else:
            # Without a resolver the decision depends on these inputs alone, so it is cached.
            # The envelope's own trace id and signature are cut out of the key: they change
            # on every request; the signature is checked per request below. The unit enters
            # as its settings: /users/1 and /users/2 share a decision.
            if TRACE_ENTRY in text:
                trace_id, signature, rest = split_volatile(text)
                if signature is not None and not self._can_verify:
                    trace_id, signature, rest = None, None, text  # nothing to check it with
            else:  # what split_volatile answers, without the call: the common edge case
                signature, rest = None, text
            edge_names = self._edge_names
            edge_values = tuple(map(carrier.get, edge_names)) if edge and edge_names else ()
            signed = signature is not None
            key = (id(self._for_unit(unit)), rest, edge_values, signed)
            decision = self._decisions.get(key)  # type: ignore[assignment]
            if decision is None:
                decision = decide(judge, rest, carrier, unit=unit, edge=edge, verified=signed)
                size = len(rest) + sum(len(v) for v in edge_values if v is not None)
                if size <= _CACHEABLE_CHARS:  # hostile giant headers are judged, not kept
                    if len(self._decisions) >= _DECISION_CACHE_SIZE:
                        self._decisions.clear()
                    self._decisions[key] = decision
            if signed and not self._verifies(rest, trace_id, signature):
                # Forged or altered: the full parser judges the header as it came.
                decision = decide(judge, text, carrier, unit=unit, edge=edge)
                trace_id = None
            elif not decision.trusts_envelope:
                trace_id = None
        if trace_id is None:
            trace_id = decision.trace_id
            if trace_id is None:
                traceparent = carrier.get(TRACEPARENT_HEADER)
                match = common_traceparent(traceparent) if traceparent else None
                if match is not None:
                    trace_id = match.group(1)
                else:
                    trace_id = trace_id_from_traceparent(traceparent)
                    if trace_id is None:
                        trace_id = mint_trace_id()
        template = decision.template
        envelope = None if template is None else with_checked_trace_id(template, trace_id)
        entry = open_entry(envelope, decision, trace_id, hop, name)
        if hooks.enter is not None:
            run_enter_hook(entry)
        if decision.outcome != "attributed" or decision.problems:
            self._report(entry)
        if events.get_sink() is not None:
            events.emit(hop_event(entry))
        return entry

    def _verifies(self, rest: str, trace_id: str | None, signature: str | None) -> bool:
        return (
            signature is not None
            and trace_id is not None
            and verifies_volatile(rest, trace_id, signature, self.keys)
        )

    def inject(
        self, carrier: MutableMapping[str, str], *, header: str = BAGGAGE_HEADER
    ) -> tuple[Envelope, tuple[Problem, ...]]:
        """Write the current envelope into ``carrier`` (signed when keys can sign).

        With no envelope bound, a fresh one marked ``unattributed`` is written: the receiver
        learns that ownership was lost before this hop, and nobody else's envelope is reused.
        On ``baggage``, foreign entries are kept; elsewhere ``carrier[header]`` is replaced.
        """
        envelope = envelope_var.get()
        if envelope is None:
            trace_id = mint_trace_id()
            problems = self._write_unattributed(carrier, header, trace_id)
            return assemble_checked(trace_id, {}, (), "unattributed"), problems
        if header == BAGGAGE_HEADER:
            return envelope, encode(envelope, carrier, self.keys)
        carrier[header] = encode_header(envelope, self.keys)
        return envelope, ()

    def write(self, carrier: MutableMapping[str, str], *, header: str = BAGGAGE_HEADER) -> None:
        """`inject` for adapters that need neither the envelope nor the problems back (an
        enqueue with nothing bound then builds no envelope object)."""
        envelope = envelope_var.get()
        if envelope is None:
            self._write_unattributed(carrier, header, mint_trace_id())
        elif header == BAGGAGE_HEADER:
            encode(envelope, carrier, self.keys)
        else:
            carrier[header] = encode_header(envelope, self.keys)

    def _write_unattributed(
        self, carrier: MutableMapping[str, str], header: str, trace_id: str
    ) -> tuple[Problem, ...]:
        # The text of encode_header(<the unattributed envelope of trace_id>, self.keys).
        ours = self._unattributed_header(trace_id)
        if header == BAGGAGE_HEADER:
            return put_baggage(carrier, ours)
        carrier[header] = ours
        return ()

    def keeps_callers(self, value: object, *, hop: str, unit: str) -> bool:
        """Whether an envelope the caller put on an outgoing message (``value``) may replace
        the one bound here: only when it verifies under the policy (valid, and believed:
        signed when signing keys are configured, unless `Policy.accept_unsigned`).

        A refusal is counted (``<hop>_caller_envelope_refused``) and logged once per reason;
        the caller then sends the bound envelope. ``unit`` must be a name, never data.
        """
        reason = refusal(self._judge, value)
        if reason is None:
            return True
        events.count(f"{hop}_caller_envelope_refused")
        if reason not in self._refusals_logged:
            self._refusals_logged.add(reason)
            logger.warning(
                "ownership envelope set by the caller on %s %r was not used (%s); the envelope "
                "bound here was sent instead (logged once per reason)",
                hop,
                shown(unit),
                reason,
                extra={"ownership_hop": hop, "ownership_refused": reason},
            )
        return False

    def _resolve(self, inbound: Inbound) -> Resolved:
        """Ask the policy's resolver; its raw ids hashed, its fields checked. Never raises."""
        resolver = self.policy.resolver
        assert resolver is not None
        fields: dict[str, str] = {}
        problems: list[Problem] = []
        try:
            resolved = resolver(inbound)
        except Exception:
            events.count("resolver_errors")
            logger.exception("ownership_ctx: resolver failed on %s %s", inbound.hop, inbound.unit)
            problems.append(Problem("resolver_error", None, "the resolver raised", "ignored"))
            return fields, tuple(problems)
        for name, value in (resolved or {}).items():
            if name in HASHED_FIELDS and check_field(name, value) is not None:
                if self.keys.hash_key is None:
                    events.count("unhashed_resolver_ids")
                    problems.append(Problem("raw_identifier", name, "no hash key to hash it"))
                    continue
                value = self.keys.hash(str(value))
            problem = (
                check_field(name, value)
                if name != "trace_id"
                else Problem("invalid", "trace_id", "a resolver cannot set the trace id")
            )
            if problem is None:
                fields[name] = value
            else:
                problems.append(problem)
        return fields, tuple(problems)

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
                shown(entry.unit),
                # For the operator, also what was set aside on purpose (an unsigned envelope).
                "; ".join(
                    [*entry.reasons(), *(str(p) for p in entry.problems if p.code in _SET_ASIDE)]
                )
                or "no ownership received",
                extra={"ownership_outcome": entry.outcome, "ownership_hop": entry.hop},
            )

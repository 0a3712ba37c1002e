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
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import Token
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple

from . import events
from .codec import (
    _TRACE_ENTRY,
    BAGGAGE_HEADER,
    QUEUE_HEADER,
    TRACEPARENT_HEADER,
    Parsed,
    common_traceparent,
    encode,
    encode_header,
    new_trace_id,
    parse,
    put_baggage,
    signature_problem,
    split_volatile,
    trace_id_from_traceparent,
    unattributed_encoder,
    verifies_volatile,
)
from .context import _envelope
from .envelope import (
    ATTRIBUTIONS,
    HASHED_FIELDS,
    OWNERSHIP_FIELDS,
    Attribution,
    Envelope,
    Problem,
    _assemble,
    _with_trace_id,
    check_field,
)
from .hashing import Keys
from .policy import Inbound, Policy

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

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

logger = logging.getLogger("ownership_ctx")

Outcome = Literal["attributed", "stamped", "quarantined", "unattributed", "rejected"]
_RANK: Final = {name: rank for rank, name in enumerate(ATTRIBUTIONS)}
_MAX_RAW_ID: Final = 256  # longer raw ids at the edge are refused rather than hashed
_DECISION_CACHE_SIZE: Final = 2048
_CACHEABLE_CHARS: Final = 2048
_MAX_UNIT_SHOWN: Final = 256  # so the cache stays under ~4 MiB of keys
_SET_ASIDE: Final = frozenset({"unsigned", "untrusted"})  # ignored problems worth a log line
_NO_TRACE_ID: Final = "0" * 32  # placeholder in cached templates; replaced before binding


_new = object.__new__

TraceIdSource = Callable[[], "str | None"]
_trace_id_source: TraceIdSource | None = None


def set_trace_id_source(source: TraceIdSource | None) -> TraceIdSource | None:
    """Where a minted trace id comes from first: e.g. the active OpenTelemetry span, so that a
    unit of work that arrives with no trace id joins the trace a tracer already started.
    ``source`` returns 32 lowercase hex or ``None``; anything invalid is ignored. Returns the
    previous source.
    """
    global _trace_id_source
    previous, _trace_id_source = _trace_id_source, source
    return previous


EnterHook = Callable[["Entry"], None]
_enter_hook: EnterHook | None = None


def set_enter_hook(hook: EnterHook | None) -> EnterHook | None:
    """Call ``hook(entry)`` each time a unit of work is admitted, after its envelope is bound
    (e.g. to annotate the span a tracer already started for it). Errors in the hook are counted
    and never reach the host. Returns the previous hook.
    """
    global _enter_hook
    previous, _enter_hook = _enter_hook, hook
    return previous


def _run_enter_hook(entry: Entry) -> None:
    try:
        _enter_hook(entry)  # type: ignore[misc]
    except Exception:
        events.count("enter_hook_errors")


def _mint_trace_id() -> str:
    source = _trace_id_source
    if source is None:
        return new_trace_id()
    try:
        from_source = source()
    except Exception:
        events.count("trace_id_source_errors")
        from_source = None
    if from_source is not None and check_field("trace_id", from_source) is None:
        return from_source
    return new_trace_id()


class _Decision(NamedTuple):
    """Everything the policy decided about one carrier, except the per-request trace id.

    Shared from a cache: the same client sends the same ownership on every request, and only
    its trace id changes. Never mutated.
    """

    template: Envelope | None  # the envelope but for its trace id; None when rejected
    outcome: Outcome
    missing: tuple[str, ...]
    problems: tuple[Problem, ...]
    trace_id: str | None  # from the envelope itself, when it carried a valid one
    trusts_envelope: bool  # whether a trace id cut out of this carrier may be used


class Entry:
    """One unit of work that crossed into this process. Close it when the unit is finished.

    ``envelope`` is what was bound (``None`` when the unit was rejected). ``problems`` says why
    parts of the incoming envelope were not used, without echoing raw values.
    """

    __slots__ = ("_decision", "_token", "envelope", "hop", "trace_id", "unit")

    def __init__(
        self,
        envelope: Envelope | None,
        decision: _Decision,
        trace_id: str,
        hop: str,
        unit: str,
    ) -> None:
        self.envelope = envelope
        self._decision = decision
        self.trace_id = trace_id
        self.hop = hop
        self.unit = unit
        self._token: Token[Envelope | None] | None = _envelope.set(envelope)

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

    def request_event(
        self, method: str, status: int | None, latency_ms: float, route: str | None = None
    ) -> dict[str, Any]:
        """The ``request`` event of an edge unit (the parent of its provider calls).

        ``route``: the framework's route template (``/users/{id}``) when it is known; it keeps
        identifiers that paths carry out of the store, and groups requests usefully.
        """
        event = _hop_event(self)
        event.update(
            kind="request",
            ts=time.time() - latency_ms / 1000,
            route=_shown(route or self.unit),
            method=method,
            status=status,
            latency_ms=round(latency_ms, 3),
        )
        return event

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

    __slots__ = (
        "_believes_unsigned",
        "_can_verify",
        "_decisions",
        "_edge_headers",
        "_edge_names",
        "_extra_keys",
        "_for_unit",
        "_refusals_logged",
        "_resolver",
        "_unattributed_header",
        "keys",
        "policy",
    )

    def __init__(self, policy: Policy | None = None, keys: Keys | None = None) -> None:
        self.policy = policy if policy is not None else Policy()
        self.keys = keys if keys is not None else Keys.from_env()
        headers = self.policy.edge_headers
        self._edge_headers = headers.items() if headers is not None else ()
        self._edge_names = tuple(header for _, header in self._edge_headers)
        self._extra_keys = frozenset(self.policy.extra_keys)
        self._decisions: dict[tuple[object, ...], _Decision] = {}
        # With signing keys, an unsigned envelope could name any team: believed only when the
        # policy says so (a migration setting), or when there are no keys to sign with.
        self._believes_unsigned = self.policy.trust == "all" and (
            not self.keys.signing_keys or self.policy.accept_unsigned
        )
        self._refusals_logged: set[str] = set()
        # Policy and Keys are frozen: what every admission asks of them, looked up once.
        self._resolver = self.policy.resolver
        self._can_verify = bool(self.keys.signing_keys)
        self._for_unit = self.policy.for_unit
        self._unattributed_header = unattributed_encoder(self.keys)
        if any(name in HASHED_FIELDS for name, _ in self._edge_headers):
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
        if self._resolver is not None:
            decision = self._decide(text, carrier, hop, unit, edge, native, name)
        else:
            # Without a resolver the decision depends on these inputs alone, so it is cached.
            # The envelope's own trace id and signature are cut out of the key: they change
            # on every request; the signature is checked per request below. The unit enters
            # as its settings: /users/1 and /users/2 share a decision.
            if _TRACE_ENTRY in text:
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
                decision = self._decide(
                    rest, carrier, hop, unit, edge, native, name, verified=signed
                )
                size = len(rest) + sum(len(v) for v in edge_values if v is not None)
                if size <= _CACHEABLE_CHARS:  # hostile giant headers are judged, not kept
                    if len(self._decisions) >= _DECISION_CACHE_SIZE:
                        self._decisions.clear()
                    self._decisions[key] = decision
            if signed and not self._verifies(rest, trace_id, signature):
                # Forged or altered: the full parser judges the header as it came.
                decision = self._decide(text, carrier, hop, unit, edge, native, name)
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
                        trace_id = _mint_trace_id()
        template = decision.template
        envelope = None if template is None else _with_trace_id(template, trace_id)
        # Entry(envelope, decision, trace_id, hop, name) written out: one call less.
        entry = _new(Entry)
        entry.envelope = envelope
        entry._decision = decision
        entry.trace_id = trace_id
        entry.hop = hop
        entry.unit = name
        entry._token = _envelope.set(envelope)
        if _enter_hook is not None:
            _run_enter_hook(entry)
        if decision.outcome != "attributed" or decision.problems:
            self._report(entry)
        if events._sink is not None:
            events.emit(_hop_event(entry))
        return entry

    def _verifies(self, rest: str, trace_id: str | None, signature: str | None) -> bool:
        return (
            signature is not None
            and trace_id is not None
            and verifies_volatile(rest, trace_id, signature, self.keys)
        )

    def _decide(
        self,
        text: str,
        carrier: Mapping[str, str],
        hop: str,
        unit: str,
        edge: bool,
        native: object,
        name: str,
        *,
        verified: bool = False,
    ) -> _Decision:
        """The policy's decision for one carrier. ``verified``: ``text`` is the rest of an
        envelope whose signature (cut out, with its trace id) the caller checks itself."""
        policy = self.policy
        unit_policy = policy.for_unit(unit)
        problems: list[Problem] = []
        fields: dict[str, str] = {}
        extras: tuple[tuple[str, str], ...] = ()
        incoming: Attribution = "attributed"

        parsed = parse(text)
        # A carrier whose only ownership entry was the (cut out) trace id: unsigned, so it is
        # believed exactly when unsigned envelopes are.
        trusted = self._believes_unsigned or (verified and policy.trust != "none")
        if parsed.present:
            if verified and policy.trust != "none":
                trusted, problem = True, None
            else:
                trusted, problem = self._trust(parsed)
            if problem is not None:
                problems.append(problem)
            if trusted:
                fields.update(parsed.fields)
                problems.extend(parsed.problems)
                extras = parsed.extras
                incoming = parsed.attribution
                if extras and not self._extra_keys.issuperset(k for k, _ in extras):
                    extras = tuple((k, v) for k, v in extras if k in self._extra_keys)
                    problems.append(
                        Problem("undeclared_extra", None, "extra field not declared", "ignored")
                    )
        trace_id = fields.pop("trace_id", None)

        if edge and self._edge_headers:
            self._read_edge_headers(carrier, fields, problems)
        if policy.resolver is not None:
            self._resolve(Inbound(carrier, hop, name, native), fields, problems)

        mode = unit_policy.mode
        local: Attribution = "attributed"
        if mode == "stamp":
            extras, local = self._stamp(unit_policy.defaults, fields, extras)
        missing = tuple(name for name in unit_policy.required if name not in fields)
        invalid = any(p.severity == "invalid" for p in problems)
        if (missing or invalid) and mode == "enforce":
            return _Decision(None, "rejected", missing, tuple(problems), trace_id, trusted)
        if missing or invalid:
            # Stamp mode fills gaps, it does not excuse wrong input: invalid is marked too.
            local = "quarantined"
        elif incoming == "unattributed" and local == "stamped":
            # Published with nothing bound (a scheduler, a script) and owned by configuration
            # here: that is what "stamped" means, not lost ownership.
            incoming = "stamped"
        attribution = incoming if _RANK[incoming] >= _RANK[local] else local
        template = _assemble(_NO_TRACE_ID, fields, extras, attribution)
        return _Decision(template, attribution, missing, tuple(problems), trace_id, trusted)

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
            trace_id = _mint_trace_id()
            problems = self._write_unattributed(carrier, header, trace_id)
            return _assemble(trace_id, {}, (), "unattributed"), problems
        if header == BAGGAGE_HEADER:
            return envelope, encode(envelope, carrier, self.keys)
        carrier[header] = encode_header(envelope, self.keys)
        return envelope, ()

    def write(self, carrier: MutableMapping[str, str], *, header: str = BAGGAGE_HEADER) -> None:
        """`inject` for adapters that need neither the envelope nor the problems back (an
        enqueue with nothing bound then builds no envelope object)."""
        envelope = _envelope.get()
        if envelope is None:
            self._write_unattributed(carrier, header, _mint_trace_id())
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
        reason = self._refusal(value)
        if reason is None:
            return True
        events.count(f"{hop}_caller_envelope_refused")
        if reason not in self._refusals_logged:
            self._refusals_logged.add(reason)
            logger.warning(
                "ownership envelope set by the caller on %s %r was not used (%s); the envelope "
                "bound here was sent instead (logged once per reason)",
                hop,
                _shown(unit),
                reason,
                extra={"ownership_hop": hop, "ownership_refused": reason},
            )
        return False

    def _refusal(self, value: object) -> str | None:
        if not isinstance(value, str):
            return "not text"
        parsed = parse(value)
        if not parsed.present:
            return "no ownership entries"
        if "trace_id" not in parsed.fields or any(p.severity == "invalid" for p in parsed.problems):
            return "invalid"
        trusted, problem = self._trust(parsed)
        if not trusted:
            return problem.code if problem is not None else "untrusted"
        return None

    def _trust(self, parsed: Parsed) -> tuple[bool, Problem | None]:
        trust = self.policy.trust
        if trust == "none":
            return False, Problem(
                "untrusted", None, "incoming envelopes are not used here", "ignored"
            )
        signature = parsed.signature
        if signature is not None and self.keys.signing_keys:
            problem = signature_problem(parsed, signature, self.keys)
            return problem is None, problem
        if not self._believes_unsigned:
            return False, Problem(
                "unsigned", None, "only signed envelopes are trusted here", "ignored"
            )
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
                        Problem(
                            "invalid", name, f"raw id must be 1-{_MAX_RAW_ID} printable characters"
                        )
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
            problem = (
                check_field(name, value)
                if name != "trace_id"
                else Problem("invalid", "trace_id", "a resolver cannot set the trace id")
            )
            if problem is None:
                fields[name] = value
            else:
                problems.append(problem)

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
                _shown(entry.unit),
                # For the operator, also what was set aside on purpose (an unsigned envelope).
                "; ".join(
                    [*entry.reasons(), *(str(p) for p in entry.problems if p.code in _SET_ASIDE)]
                )
                or "no ownership received",
                extra={"ownership_outcome": entry.outcome, "ownership_hop": entry.hop},
            )


def _shown(unit: str) -> str:
    # Units are request paths too: bounded in logs and events, whatever a client sends.
    return unit if len(unit) <= _MAX_UNIT_SHOWN else unit[: _MAX_UNIT_SHOWN - 1] + "…"


def _hop_event(entry: Entry) -> dict[str, Any]:
    envelope = entry.envelope
    return {
        "kind": "hop",
        "hop": entry.hop,
        "unit": _shown(entry.unit),
        "outcome": entry.outcome,
        "trace_id": entry.trace_id,
        "missing": list(entry.missing),
        "fields_present": [
            n for n in OWNERSHIP_FIELDS if envelope is not None and getattr(envelope, n)
        ],
        "problems": [f"{p.field or '-'}:{p.code}" for p in entry.problems],
        **(envelope.as_dict() if envelope is not None else {}),
    }

"""The gate's decision: what the policy makes of one carrier, as a pure function.

`decide` reads the ownership text of a carrier, the first-party headers at the edge and what a
resolver returned, and answers a `Decision`: the envelope but for its per-request trace id,
the outcome, the missing fields and the problems. It binds, logs, counts and keeps nothing;
the same inputs give the same decision, which is why the `ownership_ctx.gate.Gate` can cache
it, and the gate binds it (`ownership_ctx.entry.Entry`) and reports it. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, NamedTuple

from .codec import Parsed, parse, signature_problem
from .envelope import (
    ATTRIBUTIONS,
    HASHED_FIELDS,
    Attribution,
    Envelope,
    Problem,
    assemble_checked,
    check_field,
)
from .hashing import Keys
from .policy import Policy

__all__ = ["NO_TRACE_ID", "Decision", "Judge", "Outcome", "Resolved", "decide", "refusal", "trust"]

Outcome = Literal["attributed", "stamped", "quarantined", "unattributed", "rejected"]

#: The trace id of a decision's template: replaced by the unit's own before it is bound.
NO_TRACE_ID: Final = "0" * 32
MAX_RAW_ID: Final = 256  # longer raw ids at the edge are refused rather than hashed
_RANK: Final = {name: rank for rank, name in enumerate(ATTRIBUTIONS)}

#: What a resolver contributed: checked (raw ids hashed) fields, and problems.
Resolved = tuple[Mapping[str, str], tuple[Problem, ...]]


class Decision(NamedTuple):
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


class Judge:
    """What decisions are made by: a policy and keys, with what every decision asks of them
    worked out once. Immutable, like `Policy` and `Keys`."""

    __slots__ = ("believes_unsigned", "edge_headers", "extra_keys", "keys", "policy")

    def __init__(self, policy: Policy, keys: Keys) -> None:
        self.policy: Final = policy
        self.keys: Final = keys
        headers = policy.edge_headers
        self.edge_headers: Final = headers.items() if headers is not None else ()
        self.extra_keys: Final = frozenset(policy.extra_keys)
        # With signing keys, an unsigned envelope could name any team: believed only when the
        # policy says so (a migration setting), or when there are no keys to sign with.
        self.believes_unsigned: Final = policy.trust == "all" and (
            not keys.signing_keys or policy.accept_unsigned
        )


def decide(
    judge: Judge,
    text: str,
    carrier: Mapping[str, str],
    *,
    unit: str,
    edge: bool = False,
    resolved: Resolved | None = None,
    verified: bool = False,
) -> Decision:
    """The policy's decision for the ownership ``text`` of ``carrier`` on ``unit``.

    ``edge``: read the first-party headers of the carrier (raw ids hashed). ``resolved``: what
    the policy's resolver answered for this carrier. ``verified``: ``text`` is the rest of an
    envelope whose signature (cut out, with its trace id) the caller checks itself.
    """
    policy = judge.policy
    unit_policy = policy.for_unit(unit)
    problems: list[Problem] = []
    fields: dict[str, str] = {}
    extras: tuple[tuple[str, str], ...] = ()
    incoming: Attribution = "attributed"

    parsed = parse(text)
    # A carrier whose only ownership entry was the (cut out) trace id: unsigned, so it is
    # believed exactly when unsigned envelopes are.
    trusted = judge.believes_unsigned or (verified and policy.trust != "none")
    if parsed.present:
        if verified and policy.trust != "none":
            trusted, problem = True, None
        else:
            trusted, problem = trust(judge, parsed)
        if problem is not None:
            problems.append(problem)
        if trusted:
            fields.update(parsed.fields)
            problems.extend(parsed.problems)
            extras = parsed.extras
            incoming = parsed.attribution
            if extras and not judge.extra_keys.issuperset(k for k, _ in extras):
                extras = tuple((k, v) for k, v in extras if k in judge.extra_keys)
                problems.append(
                    Problem("undeclared_extra", None, "extra field not declared", "ignored")
                )
    trace_id = fields.pop("trace_id", None)

    if edge and judge.edge_headers:
        _read_edge_headers(judge, carrier, fields, problems)
    if resolved is not None:
        resolved_fields, resolved_problems = resolved
        fields.update(resolved_fields)
        problems.extend(resolved_problems)

    mode = unit_policy.mode
    local: Attribution = "attributed"
    if mode == "stamp":
        extras, local = _stamp(unit_policy.defaults, fields, extras)
    missing = tuple(name for name in unit_policy.required if name not in fields)
    invalid = any(p.severity == "invalid" for p in problems)
    if (missing or invalid) and mode == "enforce":
        return Decision(None, "rejected", missing, tuple(problems), trace_id, trusted)
    if missing or invalid:
        # Stamp mode fills gaps, it does not excuse wrong input: invalid is marked too.
        local = "quarantined"
    elif incoming == "unattributed" and local == "stamped":
        # Published with nothing bound (a scheduler, a script) and owned by configuration
        # here: that is what "stamped" means, not lost ownership.
        incoming = "stamped"
    attribution = incoming if _RANK[incoming] >= _RANK[local] else local
    template = assemble_checked(NO_TRACE_ID, fields, extras, attribution)
    return Decision(template, attribution, missing, tuple(problems), trace_id, trusted)


def trust(judge: Judge, parsed: Parsed) -> tuple[bool, Problem | None]:
    """Whether the envelope in ``parsed`` is believed here, and if not, why (a problem)."""
    policy_trust = judge.policy.trust
    if policy_trust == "none":
        return False, Problem("untrusted", None, "incoming envelopes are not used here", "ignored")
    signature = parsed.signature
    if signature is not None and judge.keys.signing_keys:
        problem = signature_problem(parsed, signature, judge.keys)
        return problem is None, problem
    if not judge.believes_unsigned:
        return False, Problem("unsigned", None, "only signed envelopes are trusted here", "ignored")
    return True, None


def refusal(judge: Judge, value: object) -> str | None:
    """Why an envelope a caller put on an outgoing message may not replace the bound one
    (``None``: it may: valid and believed)."""
    if not isinstance(value, str):
        return "not text"
    parsed = parse(value)
    if not parsed.present:
        return "no ownership entries"
    if "trace_id" not in parsed.fields or any(p.severity == "invalid" for p in parsed.problems):
        return "invalid"
    trusted, problem = trust(judge, parsed)
    if not trusted:
        return problem.code if problem is not None else "untrusted"
    return None


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


def _read_edge_headers(
    judge: Judge, carrier: Mapping[str, str], fields: dict[str, str], problems: list[Problem]
) -> None:
    found = False
    believed = judge.policy.trust == "all"
    for name, header in judge.edge_headers:
        value = carrier.get(header)
        if value is None:
            continue
        found = True
        if not believed:
            continue
        value = value.strip()
        if name in HASHED_FIELDS and check_field(name, value) is not None:
            if not value or len(value) > MAX_RAW_ID or not value.isprintable():
                problems.append(
                    Problem("invalid", name, f"raw id must be 1-{MAX_RAW_ID} printable characters")
                )
                continue
            value = judge.keys.hash(value)
        problem = check_field(name, value)
        if problem is None:
            fields[name] = value
        else:
            problems.append(problem)
    if found and not believed:
        problems.append(
            Problem("untrusted", None, "first-party headers are not trusted here", "ignored")
        )

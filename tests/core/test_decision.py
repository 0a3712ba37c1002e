"""The gate's decision is a pure function of the carrier, the unit and the policy.

`ownership_ctx.decision.decide` binds nothing, emits, counts and logs nothing, and answers the
same for the same inputs; the gate caches it per carrier and shares it between the units that
send the same ownership. (What the decision *is* for each mode and input: test_core.py and
the property tests.)
"""

from __future__ import annotations

import logging

import pytest

from ownership_ctx import EdgeHeaders, Keys, Policy, current, events
from ownership_ctx.decision import NO_TRACE_ID, Judge, decide
from ownership_ctx.envelope import Problem
from ownership_ctx.gate import Gate
from tests.support.sinks import ListSink

KEYS = Keys(hash_key=b"decision-hash-key-0123", signing_keys=(b"decision-signing-key-01",))
FULL = "ownership.v=1,ownership.owner_team=search,ownership.workflow_id=wf,ownership.feature=f"
CARRIERS = [
    {"baggage": FULL},
    {"baggage": "ownership.v=1,ownership.owner_team=bad team!"},  # invalid
    {"baggage": "ownership.v=1,ownership.owner_team=search,ownership.sig=x1:00"},  # forged
    {"x-owner-team": "search", "x-tenant-id": "acme"},  # first-party headers at the edge
    {},
]
POLICIES = [
    Policy(),
    Policy(mode="quarantine", accept_unsigned=True),
    Policy(mode="stamp", defaults={"owner_team": "ops", "workflow_id": "w", "feature": "f"}),
    Policy(edge_headers=EdgeHeaders(tenant="x-tenant-id")),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("carrier", CARRIERS)
def test_decide_is_pure(
    policy: Policy,
    carrier: dict[str, str],
    event_sink: ListSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    judge = Judge(policy, KEYS)
    stats = dict(events.stats)
    with caplog.at_level(logging.DEBUG):
        first = decide(judge, carrier.get("baggage", ""), carrier, unit="/x", edge=True)
        again = decide(judge, carrier.get("baggage", ""), carrier, unit="/x", edge=True)
    assert first == again
    assert current() is None  # nothing bound
    assert event_sink.events == []
    assert dict(events.stats) == stats
    assert caplog.records == []
    if first.template is not None:  # the unit's own trace id is the gate's business
        assert first.template.trace_id == NO_TRACE_ID


def test_what_a_resolver_answered_is_an_input_like_any_other() -> None:
    judge = Judge(Policy(resolver=lambda inbound: None), KEYS)
    resolved = ({"owner_team": "billing", "workflow_id": "wf", "feature": "f"}, ())
    decision = decide(judge, "", {}, unit="/x", resolved=resolved)
    assert decision.outcome == "attributed"
    assert decision.template is not None and decision.template.owner_team == "billing"
    problem = Problem("resolver_error", None, "the resolver raised", "ignored")
    failed = decide(judge, "", {}, unit="/x", resolved=({}, (problem,)))
    assert failed.outcome == "rejected" and failed.problems == (problem,)


def test_the_gate_shares_one_decision_between_units_with_the_same_ownership() -> None:
    gate = Gate(Policy(accept_unsigned=True), KEYS)
    with gate.enter({"baggage": FULL}, hop="http", unit="/users/1") as one:
        pass
    with gate.enter({"baggage": FULL}, hop="http", unit="/users/2") as two:
        pass
    assert one.decision is two.decision
    assert one.trace_id != two.trace_id  # each unit gets its own trace id
    assert one.envelope is not None and two.envelope is not None
    assert (one.envelope.trace_id, two.envelope.trace_id) == (one.trace_id, two.trace_id)

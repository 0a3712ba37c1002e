"""Envelope rules, keyed hashing and signing, policy resolution and the gate's decisions."""

from __future__ import annotations

import logging

import pytest

from ownership_ctx import (
    ConfigurationError,
    EdgeHeaders,
    Envelope,
    Gate,
    Inbound,
    InvalidEnvelope,
    Keys,
    Policy,
    Rule,
    current,
    encode_header,
    events,
    hash_identifier,
    new_trace_id,
)
from ownership_ctx.codec import QUEUE_HEADER, decode_header, split_trace_id
from ownership_ctx.policy import UnitPolicy

HASH_KEY = b"test-hash-key-0123456789"
SIGN_KEY = b"test-signing-key-0123456789"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
KEYS = Keys(hash_key=HASH_KEY, signing_keys=(SIGN_KEY,))
# For tests of unsigned envelopes: with signing keys, those are not believed by default.
HASH_ONLY = Keys(hash_key=HASH_KEY)


def full(**changes: object) -> Envelope:
    base = Envelope(
        trace_id=TRACE,
        owner_team="search",
        workflow_id="ticket-triage",
        feature="summarize",
        tenant=hash_identifier("acme", HASH_KEY),
        user=hash_identifier("u-1", HASH_KEY),
    )
    return base.replace(**changes) if changes else base


# -- envelope ---------------------------------------------------------------------------------


def test_envelope_is_immutable_and_replace_makes_a_validated_copy() -> None:
    envelope = full()
    with pytest.raises(AttributeError):
        envelope.owner_team = "other"  # type: ignore[misc]
    changed = envelope.replace(feature="search-v2")
    assert changed.feature == "search-v2" and envelope.feature == "summarize"
    assert changed.trace_id == envelope.trace_id
    with pytest.raises(InvalidEnvelope):
        envelope.replace(owner_team="has space")


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("trace_id", "0" * 32, "invalid"),
        ("trace_id", "ABCDEF" + "0" * 26, "invalid"),
        ("owner_team", "", "invalid"),
        ("owner_team", "x" * 65, "invalid"),
        ("workflow_id", "x" * 129, "invalid"),
        ("feature", "a,b", "invalid"),
        ("tenant", "alice@example.com", "raw_identifier"),
        ("user", "12345", "raw_identifier"),
        ("tenant", "h1:" + "A" * 32, "raw_identifier"),
    ],
)
def test_envelope_rejects_values_that_break_the_contract(field: str, value: str, code: str) -> None:
    kwargs: dict[str, object] = {"trace_id": TRACE, field: value}
    with pytest.raises(InvalidEnvelope) as caught:
        Envelope(**kwargs)  # type: ignore[arg-type]
    assert [(p.field, p.code) for p in caught.value.problems] == [(field, code)]
    assert value not in str(caught.value) or value == ""  # the rule is named, not the value


def test_envelope_bounds_are_inclusive() -> None:
    envelope = Envelope(
        trace_id=TRACE, owner_team="t" * 64, workflow_id="w" * 128, feature="f" * 64
    )
    assert envelope.missing(("owner_team", "tenant", "user")) == ("tenant", "user")


def test_envelope_extras_are_normalized_and_limited() -> None:
    envelope = Envelope(trace_id=TRACE, extras={"cost_center": "cc-1", "app": "web"})
    assert envelope.extras == (("app", "web"), ("cost_center", "cc-1"))
    assert envelope.extra("cost_center") == "cc-1" and envelope.extra("nope") is None
    assert envelope.as_dict()["extra.cost_center"] == "cc-1"
    with pytest.raises(InvalidEnvelope):
        Envelope(trace_id=TRACE, extras={f"k{i}": "v" for i in range(9)})
    with pytest.raises(InvalidEnvelope):
        Envelope(trace_id=TRACE, extras={"Bad-Key": "v"})


def test_as_dict_lists_only_fields_with_values() -> None:
    envelope = Envelope(trace_id=TRACE, owner_team="search")
    assert envelope.as_dict() == {
        "trace_id": TRACE,
        "owner_team": "search",
        "attribution": "attributed",
    }


# -- hashing and signing ----------------------------------------------------------------------


def test_hashing_is_keyed_and_stable() -> None:
    first = hash_identifier("acme", HASH_KEY)
    assert first == hash_identifier("acme", HASH_KEY)
    assert first.startswith("h1:") and len(first) == 35
    assert first != hash_identifier("acme", b"another-key-0123456789")
    assert first != hash_identifier("acme2", HASH_KEY)


def test_keys_from_env_and_clear_errors() -> None:
    keys = Keys.from_env(
        {
            "OWNERSHIP_CTX_HASH_KEY": "h" * 20,
            "OWNERSHIP_CTX_SIGNING_KEYS": "new" * 6 + ", " + "old" * 6,
        }
    )
    assert keys.hash_key == b"h" * 20 and keys.signing_keys == (b"new" * 6, b"old" * 6)
    assert Keys.from_env({}) == Keys()
    with pytest.raises(ConfigurationError, match="OWNERSHIP_CTX_HASH_KEY"):
        Keys().hash("acme")
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        Keys(hash_key=b"short")


def test_signature_covers_every_entry_and_rotation_verifies_old_keys() -> None:
    old = Keys(signing_keys=(b"old-signing-key-0123",))
    rotated = Keys(signing_keys=(b"new-signing-key-0123", b"old-signing-key-0123"))
    text = encode_header(full(), old)
    envelope, problems = decode_header(text, rotated)
    assert envelope == full() and problems == ()
    forged = text.replace("owner_team=search", "owner_team=finance")
    envelope, problems = decode_header(forged, rotated)
    assert envelope is None and [p.code for p in problems] == ["bad_signature"]
    envelope, problems = decode_header(text, Keys(signing_keys=(b"unrelated-key-0123456",)))
    assert envelope is None


# -- policy -----------------------------------------------------------------------------------


def test_rules_resolve_first_match_and_merge_defaults() -> None:
    policy = Policy(
        mode="enforce",
        defaults={"owner_team": "platform"},
        rules=(
            Rule("/health*", required=()),
            Rule("reports.*", mode="stamp", defaults={"workflow_id": "nightly"}),
            Rule("reports.*", mode="quarantine"),
        ),
    )
    assert policy.for_unit("/healthz") == UnitPolicy("enforce", (), {"owner_team": "platform"})
    assert policy.for_unit("reports.daily") == UnitPolicy(
        "stamp",
        ("owner_team", "workflow_id", "feature"),
        {"owner_team": "platform", "workflow_id": "nightly"},
    )
    assert policy.for_unit("/v1/chat").mode == "enforce"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "strict"},
        {"trust": "some"},
        {"required": ("team",)},
        {"defaults": {"tenant": "raw-tenant"}},
        {"defaults": {"owner_team": "bad team"}},
        {"extra_keys": ("Bad",)},
        {"rules": (Rule("x", required=("nope",)),)},
    ],
)
def test_policy_refuses_impossible_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_raw_tenant_headers_need_a_hash_key_at_startup() -> None:
    with pytest.raises(ConfigurationError, match="hash key"):
        Gate(Policy(edge_headers=EdgeHeaders(tenant="x-tenant-id")), Keys())


# -- the gate ---------------------------------------------------------------------------------


def enter(gate: Gate, carrier: dict[str, str], **kwargs: object) -> tuple[str, Envelope | None]:
    entry = gate.enter(
        carrier, hop=str(kwargs.pop("hop", "http")), unit=str(kwargs.pop("unit", "/")), **kwargs
    )  # type: ignore[arg-type]
    try:
        assert current() == entry.envelope
        return entry.outcome, entry.envelope
    finally:
        entry.close()
        assert current() is None


def test_modes_decide_missing_fields() -> None:
    partial = {"baggage": f"ownership.trace_id={TRACE},ownership.owner_team=search"}
    enforce = Gate(Policy(mode="enforce"), HASH_ONLY)
    assert enter(enforce, partial) == ("rejected", None)

    outcome, envelope = enter(Gate(Policy(mode="quarantine"), HASH_ONLY), partial)
    assert outcome == "quarantined"
    assert envelope == Envelope(trace_id=TRACE, owner_team="search", attribution="quarantined")

    defaults = {"workflow_id": "unknown", "feature": "unknown", "owner_team": "platform"}
    outcome, envelope = enter(Gate(Policy(mode="stamp", defaults=defaults), HASH_ONLY), partial)
    assert envelope == Envelope(
        trace_id=TRACE,
        owner_team="search",  # what was sent wins over the default
        workflow_id="unknown",
        feature="unknown",
        attribution="stamped",
    )


def test_a_complete_envelope_passes_unchanged() -> None:
    carrier = {"baggage": encode_header(full())}
    for mode in ("enforce", "quarantine", "stamp"):
        assert enter(Gate(Policy(mode=mode), HASH_ONLY), carrier) == ("attributed", full())  # type: ignore[arg-type]


def test_upstream_marking_is_kept_downstream() -> None:
    quarantined = full(attribution="quarantined")
    outcome, envelope = enter(
        Gate(Policy(), HASH_ONLY), {QUEUE_HEADER: encode_header(quarantined)}, header=QUEUE_HEADER
    )
    assert (outcome, envelope) == ("quarantined", quarantined)


def test_trace_id_comes_from_the_envelope_then_traceparent_then_is_minted() -> None:
    gate = Gate(Policy(mode="quarantine", required=()), HASH_ONLY)
    other = new_trace_id()
    traceparent = f"00-{other}-00f067aa0ba902b7-01"
    _, with_both = enter(gate, {"baggage": encode_header(full()), "traceparent": traceparent})
    assert with_both is not None and with_both.trace_id == TRACE
    _, from_traceparent = enter(gate, {"traceparent": traceparent})
    assert from_traceparent is not None and from_traceparent.trace_id == other
    minted = {enter(gate, {"traceparent": "garbage"})[1].trace_id for _ in range(50)}  # type: ignore[union-attr]
    assert len(minted) == 50 and TRACE not in minted and other not in minted


def test_cached_decisions_never_share_trace_ids() -> None:
    gate = Gate(Policy(), HASH_ONLY)
    base = encode_header(full())
    seen = set()
    for _ in range(20):
        trace_id = new_trace_id()
        text = base.replace(TRACE, trace_id)
        assert split_trace_id(text)[0] == trace_id
        _, envelope = enter(gate, {"baggage": text})
        assert envelope == full(trace_id=trace_id)
        seen.add(envelope.trace_id)  # type: ignore[union-attr]
    assert len(seen) == 20


def test_trust_signed_ignores_unsigned_and_first_party_headers() -> None:
    gate = Gate(Policy(mode="quarantine", trust="signed"), KEYS)
    unsigned = {"baggage": encode_header(full()), "x-owner-team": "search"}
    outcome, envelope = enter(gate, unsigned, edge=True)
    assert outcome == "quarantined" and envelope is not None
    assert envelope.owner_team is None and envelope.trace_id != TRACE
    outcome, envelope = enter(gate, {"baggage": encode_header(full(), KEYS)}, edge=True)
    assert (outcome, envelope) == ("attributed", full())


def test_trust_none_takes_ownership_only_from_the_resolver() -> None:
    def resolver(inbound: Inbound) -> dict[str, str]:
        assert inbound.unit == "/v1/chat" and inbound.hop == "http"
        key = inbound.carrier.get("x-api-key")
        return (
            {
                "owner_team": "billing",
                "workflow_id": "invoices",
                "feature": "chat",
                "tenant": "acme",
            }
            if key == "k-1"
            else {}
        )

    gate = Gate(Policy(trust="none", resolver=resolver), KEYS)
    outcome, envelope = enter(
        gate, {"baggage": encode_header(full()), "x-api-key": "k-1"}, unit="/v1/chat"
    )
    assert outcome == "attributed" and envelope is not None
    assert (envelope.owner_team, envelope.workflow_id, envelope.feature) == (
        "billing",
        "invoices",
        "chat",
    )
    assert envelope.tenant == hash_identifier("acme", HASH_KEY)  # raw id hashed, never kept
    assert enter(gate, {"baggage": encode_header(full())}, unit="/v1/chat") == ("rejected", None)


def test_a_failing_resolver_degrades_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    from ownership_ctx import events

    def resolver(inbound: Inbound) -> dict[str, str]:
        raise RuntimeError("bug in host code")

    before = events.stats["resolver_errors"]
    gate = Gate(Policy(mode="quarantine", resolver=resolver), HASH_ONLY)
    outcome, envelope = enter(gate, {"baggage": encode_header(full())})
    assert (outcome, envelope) == ("attributed", full())
    assert events.stats["resolver_errors"] == before + 1


def test_edge_headers_hash_raw_ids_and_refuse_them_in_baggage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Policy(edge_headers=EdgeHeaders(tenant="x-tenant-id", user="x-user-id"))
    gate = Gate(policy, HASH_ONLY)
    carrier = {
        "x-owner-team": "search",
        "x-workflow-id": "ticket-triage",
        "x-feature": "summarize",
        "x-tenant-id": "acme",
        "x-user-id": "u-1",
        "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
    }
    assert enter(gate, carrier, edge=True) == ("attributed", full())
    # Not at the edge (a worker): first-party headers mean nothing.
    assert enter(gate, carrier) == ("rejected", None)
    caplog.set_level(logging.INFO, "ownership_ctx")
    raw = encode_header(full()).replace(full().tenant or "", "alice@example.com")
    assert enter(gate, {"baggage": raw}) == ("rejected", None)
    assert "alice@example.com" not in caplog.text and "raw_identifier" in caplog.text


def test_extras_only_when_declared() -> None:
    text = encode_header(full(extras={"cost_center": "cc-9", "secret": "x"}))
    _, envelope = enter(Gate(Policy(extra_keys=("cost_center",)), HASH_ONLY), {"baggage": text})
    assert envelope == full(extras={"cost_center": "cc-9"})


def test_inject_writes_current_or_an_unattributed_envelope() -> None:
    gate = Gate(Policy(), KEYS)
    carrier: dict[str, str] = {}
    envelope, problems = gate.inject(carrier, header=QUEUE_HEADER)
    assert envelope.attribution == "unattributed" and envelope.owner_team is None
    assert decode_header(carrier[QUEUE_HEADER], KEYS) == (envelope, ())
    from ownership_ctx import bind

    with bind(full()):
        carrier = {"baggage": "sentry-environment=prod,ownership.owner_team=stale"}
        envelope, problems = gate.inject(carrier)
    assert envelope == full() and problems == ()
    assert carrier["baggage"].startswith("sentry-environment=prod,ownership.v=1,")
    assert "stale" not in carrier["baggage"] and ",ownership.sig=s2:" in carrier["baggage"]


def test_hop_events_reach_the_sink(event_sink: object) -> None:
    gate = Gate(Policy(mode="quarantine"), HASH_ONLY)
    enter(gate, {"baggage": encode_header(full())}, unit="/a")
    enter(gate, {}, unit="/b")
    events = event_sink.events  # type: ignore[attr-defined]
    assert [(e["unit"], e["outcome"], e["missing"]) for e in events] == [
        ("/a", "attributed", []),
        ("/b", "quarantined", ["owner_team", "workflow_id", "feature"]),
    ]
    assert events[0]["owner_team"] == "search" and events[0]["trace_id"] == TRACE


# --- unsigned envelopes where signing keys are configured (issue 11, item 4) -----------------


def test_with_signing_keys_unsigned_envelopes_are_believed_only_when_the_policy_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ownership_ctx")
    carrier = {"baggage": encode_header(full())}
    gate = Gate(Policy(mode="quarantine"), KEYS)
    entry = gate.enter(carrier, hop="http", unit="/")
    entry.close()
    assert entry.outcome == "quarantined" and entry.trace_id != TRACE
    assert [(p.code, p.severity) for p in entry.problems] == [("unsigned", "ignored")]
    assert "unsigned" in caplog.text  # the operator is told why
    # The migration setting, and no keys at all: believed.
    for policy, keys in ((Policy(accept_unsigned=True), KEYS), (Policy(), HASH_ONLY)):
        assert enter(Gate(policy, keys), carrier) == ("attributed", full())
    # Signed: believed either way.
    assert enter(Gate(Policy(), KEYS), {"baggage": encode_header(full(), KEYS)}) == (
        "attributed",
        full(),
    )


def test_accept_unsigned_from_the_environment() -> None:
    assert Policy.from_env({"OWNERSHIP_CTX_ACCEPT_UNSIGNED": "1"}).accept_unsigned
    assert not Policy.from_env({"OWNERSHIP_CTX_ACCEPT_UNSIGNED": "false"}).accept_unsigned
    assert not Policy.from_env({}).accept_unsigned
    with pytest.raises(ValueError, match="OWNERSHIP_CTX_ACCEPT_UNSIGNED"):
        Policy.from_env({"OWNERSHIP_CTX_ACCEPT_UNSIGNED": "maybe"})


def test_a_callers_envelope_replaces_the_bound_one_only_if_it_verifies() -> None:
    gate = Gate(Policy(), KEYS)
    other = full(owner_team="other-team")
    assert gate.keeps_callers(encode_header(other, KEYS), hop="q", unit="t")
    before = events.stats["q_caller_envelope_refused"]
    for value in (
        encode_header(other),  # unsigned
        encode_header(other, Keys(signing_keys=(b"some-other-signing-key",))),
        "garbage",
        "ownership.v=1,ownership.owner_team=a b",
        12345,
    ):
        assert not gate.keeps_callers(value, hop="q", unit="t")
    assert events.stats["q_caller_envelope_refused"] - before == 5
    assert Gate(Policy(accept_unsigned=True), KEYS).keeps_callers(
        encode_header(other), hop="q", unit="t"
    )
    assert not Gate(Policy(trust="none"), HASH_ONLY).keeps_callers(
        encode_header(other), hop="q", unit="t"
    )


# --- stamp mode and invalid input (issue 11, item 9) ------------------------------------------


def test_stamp_mode_marks_invalid_input_with_nothing_missing() -> None:
    defaults = {"owner_team": "platform", "workflow_id": "batch", "feature": "default"}
    gate = Gate(Policy(mode="stamp", defaults=defaults), HASH_ONLY)
    baggage = encode_header(full(user=None)) + ",ownership.user=not-a-hash"
    outcome, envelope = enter(gate, {"baggage": baggage})
    assert outcome == "quarantined"
    assert envelope is not None and envelope.owner_team == "search" and envelope.user is None

"""Property tests of the wire format and of the gate's decision cache (hypothesis).

What they prove (issue 2, Acceptance): every valid envelope survives encode -> decode unchanged,
alone and mixed with arbitrary foreign W3C baggage; decoding arbitrary text or bytes never
raises and never yields an envelope that breaks the field rules; encoded output stays within
the W3C limits; signatures catch any single-character change; OpenTelemetry's propagator and
ours read each other's carriers; the gate's decision cache never mixes up two requests.
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context

from ownership_ctx import EdgeHeaders, Envelope, Gate, Keys, Policy, decode, decode_header, events
from ownership_ctx.codec import (
    MAX_BAGGAGE_BYTES,
    MAX_BAGGAGE_ENTRIES,
    MAX_ENTRY_BYTES,
    PREFIX,
    QUEUE_HEADER,
    encode,
    encode_header,
)
from ownership_ctx.envelope import ATTRIBUTIONS, FIELDS, FORMAT_VERSION
from ownership_ctx.gate import Entry

HASH_KEY = b"property-hash-key-0123456789"
TRACE_ONE = "0" * 31 + "1"
KEY_A = b"property-signing-key-A-0123456789"
KEY_B = b"property-signing-key-B-0123456789"
KEY_C = b"property-signing-key-C-0123456789"
KEYS_A = Keys(hash_key=HASH_KEY, signing_keys=(KEY_A,))
KEYS_B = Keys(hash_key=HASH_KEY, signing_keys=(KEY_B,))

STAMP_DEFAULTS = {"owner_team": "platform", "workflow_id": "unclassified", "feature": "default"}

#: Example counts keep the file to a few seconds; OWNERSHIP_CTX_PROPERTY_SCALE=20 digs deeper.
SCALE = int(os.environ.get("OWNERSHIP_CTX_PROPERTY_SCALE", "1"))
FAST = settings(max_examples=100 * SCALE, deadline=None)
SLOW = settings(
    max_examples=50 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- strategies -------------------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "._:/-"
HEX = "0123456789abcdef"


def tokens(max_size: int) -> st.SearchStrategy[str]:
    """Tokens of the contract, with the length bounds drawn often."""
    return st.one_of(
        st.text(TOKEN, min_size=1, max_size=max_size),
        st.text(TOKEN, min_size=max_size, max_size=max_size),
        st.text(TOKEN, min_size=1, max_size=1),
    )


trace_ids = st.text(HEX, min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
hashed = st.text(HEX, min_size=32, max_size=32).map(lambda s: "h1:" + s)
extra_keys = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)

envelopes = st.builds(
    Envelope,
    trace_id=trace_ids,
    owner_team=st.none() | tokens(64),
    workflow_id=st.none() | tokens(128),
    feature=st.none() | tokens(64),
    tenant=st.none() | hashed,
    user=st.none() | hashed,
    extras=st.dictionaries(extra_keys, tokens(128), max_size=8),
    attribution=st.sampled_from(ATTRIBUTIONS),
    version=st.just(FORMAT_VERSION),
)

# W3C baggage grammar: key = token (tchar), value = *baggage-octet, properties after ';'.
TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
BAGGAGE_OCTETS = "".join(
    chr(c)
    for c in [0x21, *range(0x23, 0x2C), *range(0x2D, 0x3B), *range(0x3C, 0x5C), *range(0x5D, 0x7F)]
)
ows = st.text(" \t", max_size=2)
foreign_keys = st.text(TCHAR, min_size=1, max_size=12).filter(lambda k: not k.startswith(PREFIX))
foreign_values = st.text(BAGGAGE_OCTETS, max_size=24)


@st.composite
def foreign_members(draw: st.DrawFn) -> str:
    """One valid foreign list-member, with properties and optional whitespace."""
    key, value = draw(foreign_keys), draw(foreign_values)
    member = f"{draw(ows)}{key}{draw(ows)}={draw(ows)}{value}"
    for _ in range(draw(st.integers(0, 2))):
        prop = draw(foreign_keys)
        if draw(st.booleans()):
            prop += f"{draw(ows)}={draw(ows)}{draw(foreign_values)}"
        member += f"{draw(ows)};{draw(ows)}{prop}"
    return member + draw(ows)


foreign_lists = st.lists(foreign_members(), max_size=6)


def members_of(text: str) -> dict[str, str]:
    return dict(member.split("=", 1) for member in text.split(","))


def revalidated(envelope: Envelope | None) -> None:
    """An envelope that exists must satisfy every field rule: rebuilding it must not raise."""
    if envelope is not None:
        assert isinstance(envelope, Envelope)
        assert Envelope(**envelope.as_kwargs()) == envelope


def within_w3c_limits(text: str) -> None:
    members = text.split(",")
    assert len(text.encode("utf-8")) <= MAX_BAGGAGE_BYTES
    assert len(members) <= MAX_BAGGAGE_ENTRIES
    assert all(len(m.encode("utf-8")) <= MAX_ENTRY_BYTES for m in members)


# -- round trips ------------------------------------------------------------------------------


@FAST
@given(envelopes, st.booleans())
def test_every_valid_envelope_survives_the_header_and_the_carrier(
    envelope: Envelope, signed: bool
) -> None:
    keys = KEYS_A if signed else None
    header = encode_header(envelope, keys)
    within_w3c_limits(header)
    assert decode_header(header, keys) == (envelope, ())
    assert decode_header(header) == (envelope, ())  # a verifier without keys reads it too
    carrier: dict[str, str] = {}
    assert encode(envelope, carrier, keys) == ()
    assert carrier == {"baggage": header}
    assert decode(carrier, keys) == (envelope, ())


@FAST
@given(envelopes, foreign_lists, foreign_lists, st.booleans(), ows, ows)
def test_round_trip_mixed_with_foreign_baggage(
    envelope: Envelope,
    before: list[str],
    after: list[str],
    signed: bool,
    left: str,
    right: str,
) -> None:
    keys = KEYS_A if signed else None
    ours = left + encode_header(envelope, keys) + right
    carrier = {"baggage": ",".join([*before, ours, *after])}
    assert decode(carrier, keys) == (envelope, ())
    assert decode_header(carrier["baggage"], keys) == (envelope, ())


@FAST
@given(envelopes, envelopes, foreign_lists, st.data())
def test_encode_replaces_older_ownership_entries_and_keeps_foreign_ones_in_order(
    envelope: Envelope, older: Envelope, foreign: list[str], data: st.DataObject
) -> None:
    stale = [data.draw(ows) + member + data.draw(ows) for member in encode_header(older).split(",")]
    # Interleave the stale ownership entries with the foreign ones, foreign order preserved.
    mixed = list(foreign)
    for member in stale:
        mixed.insert(data.draw(st.integers(0, len(mixed))), member)
    carrier = {"baggage": ",".join(mixed), "traceparent": "keep-me"}
    assert encode(envelope, carrier) == ()
    assert carrier["traceparent"] == "keep-me"
    assert carrier["baggage"] == ",".join([*foreign, encode_header(envelope)])
    assert decode(carrier) == (envelope, ())


# -- the W3C limits ---------------------------------------------------------------------------


@SLOW
@given(
    envelopes,
    st.booleans(),
    st.integers(0, 200),
    st.lists(st.integers(1, MAX_ENTRY_BYTES - 8), max_size=4),
)
def test_encoded_output_never_exceeds_the_w3c_limits(
    envelope: Envelope, signed: bool, small: int, big: list[int]
) -> None:
    keys = KEYS_A if signed else None
    foreign = [f"f{i}=v" for i in range(small)] + [f"b{i}=" + "x" * n for i, n in enumerate(big)]
    existing = ",".join(foreign)
    carrier = {"baggage": existing} if existing else {}
    ours = encode_header(envelope, keys)
    merged = ",".join([*foreign, ours])
    fits = (
        len(merged.split(",")) <= MAX_BAGGAGE_ENTRIES and len(merged.encode()) <= MAX_BAGGAGE_BYTES
    )

    before = dict(events.stats)
    problems = encode(envelope, carrier, keys)

    within_w3c_limits(carrier["baggage"])
    assert decode(carrier, keys) == (envelope, ())  # ours always go in, whole
    if fits:
        assert problems == ()
        assert carrier["baggage"] == merged
        return
    # Whole foreign members dropped, the others kept unaltered and in order ...
    assert carrier["baggage"].endswith("," + ours) or carrier["baggage"] == ours
    kept = carrier["baggage"].split(",")[: -len(ours.split(","))]
    remaining = iter(foreign)
    assert all(member in remaining for member in kept)  # an ordered sub-list of foreign
    dropped = list(foreign)
    for member in kept:
        dropped.remove(member)
    assert dropped
    # ... and no more than needed: adding back any dropped member would break a limit.
    for member in dropped:
        grown = ",".join([*kept, member, ours])
        assert (
            len(grown.split(",")) > MAX_BAGGAGE_ENTRIES or len(grown.encode()) > MAX_BAGGAGE_BYTES
        )
    # Each drop counted, under the limit that caused it.
    counted = {
        name: events.stats[name] - before.get(name, 0)
        for name in ("foreign_baggage_dropped_members", "foreign_baggage_dropped_bytes")
    }
    assert sum(counted.values()) == len(dropped)
    assert {p.code for p in problems} == {"foreign_baggage_dropped"}
    assert len(problems) == sum(1 for n in counted.values() if n)
    assert all(p.severity == "ignored" for p in problems)


# -- decoding hostile text never raises -------------------------------------------------------

FRAGMENTS = [
    "ownership.v=1",
    "ownership.v=2",
    "ownership.v=%31",
    "ownership.trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
    "ownership.trace_id=" + "0" * 32,
    "ownership.trace_id =4bf92f3577b34da6a3ce929d0e0e4737",
    "ownership.owner_team=search",
    "ownership.owner_team=a%2Cb",
    "ownership.workflow_id=w;prop=1",
    "ownership.feature=%C3%28",
    "ownership.feature=%zz",
    "ownership.tenant=alice@example.com",
    "ownership.user=h1:" + "a" * 32,
    "ownership.attribution=quarantined",
    "ownership.attribution=bogus",
    "ownership.x.cost_center=cc-1",
    "ownership.x.Bad=1",
    "ownership.sig=s1:" + "0" * 32,
    "ownership.sig=s2:" + "0" * 32,
    "ownership.",
    "ownership.=",
    "ownership.owner_team",
    " ownership.owner_team = x ",
    "sentry-environment=prod",
    "=",
    ";",
    "%",
    "\r\n",
    "\x00",
    "é",
    "\udcff",
]
fragment_texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40
).flatmap(lambda parts: st.sampled_from([",", ", ", ";", ""]).map(lambda sep: sep.join(parts)))
hostile_texts = st.one_of(
    st.text(),
    st.binary().map(lambda raw: raw.decode("latin-1")),  # as an ASGI server hands bytes over
    fragment_texts,
    fragment_texts.map(lambda text: text * 60),  # past 2048 chars, 180 entries, 8192 bytes
)
NAMEABLE = {None, *FIELDS, "version", "v", "sig", "attribution", "extra"}
traceparents = st.one_of(
    st.none(),
    st.text(max_size=60),
    trace_ids.map(lambda t: f"00-{t}-00f067aa0ba902b7-01"),
    st.just("00-" + "0" * 32 + "-00f067aa0ba902b7-01"),
)


@settings(max_examples=300 * SCALE, deadline=None)
@given(hostile_texts, traceparents)
def test_decoding_arbitrary_text_never_raises_nor_yields_an_invalid_envelope(
    text: str, traceparent: str | None
) -> None:
    envelope, problems = decode_header(text, KEYS_A)
    revalidated(envelope)
    carrier = {"baggage": text}
    if traceparent is not None:
        carrier["traceparent"] = traceparent
    envelope, problems = decode(carrier, KEYS_A)
    revalidated(envelope)
    envelope, problems = decode(carrier)
    revalidated(envelope)
    for problem in problems:  # problems name our fields only, never a hostile key
        assert problem.field in NAMEABLE or problem.field.startswith("extra.")
    for mode in ("enforce", "quarantine", "stamp"):
        gate = Gate(Policy(mode=mode, defaults=STAMP_DEFAULTS), KEYS_A)  # type: ignore[arg-type]
        with gate.enter(carrier, hop="http", unit="/", edge=True) as entry:
            revalidated(entry.envelope)
            assert entry.rejected == (entry.envelope is None)


# -- signatures -------------------------------------------------------------------------------

SIG_KEY = PREFIX + "sig="


@FAST
@given(envelopes, st.data())
def test_any_single_character_change_to_a_signed_envelope_is_caught(
    envelope: Envelope, data: st.DataObject
) -> None:
    header = encode_header(envelope, KEYS_A)
    assert decode_header(header, KEYS_A) == (envelope, ())
    members = header.split(",")
    index = data.draw(st.integers(0, len(members) - 1), label="member")
    member = members[index]
    position = data.draw(st.integers(0, len(member) - 1), label="position")
    char = data.draw(st.characters().filter(lambda c: c != member[position]), label="char")
    members[index] = member[:position] + char + member[position + 1 :]
    mutated = ",".join(members)

    for carrier in ({QUEUE_HEADER: mutated}, {"baggage": f"sentry-env=prod,{mutated},k=v"}):
        if QUEUE_HEADER in carrier:
            decoded, problems = decode_header(mutated, KEYS_A)
        else:
            decoded, problems = decode(carrier, KEYS_A)
        if decoded is None:
            assert problems[-1].code == "bad_signature" and problems[-1].field == "sig"
            continue
        if not (member.startswith(SIG_KEY) and position < len(SIG_KEY)):
            # The change did not alter the envelope: it hid the version entry, which only
            # restates the default. The signature covers the envelope, not the text.
            assert member == "ownership.v=1" and decoded == envelope
            continue
        # Else only a change to the signature's key lets the envelope through, as an unsigned
        # one; a gate that trusts only signed envelopes ignores it.
        header = QUEUE_HEADER if QUEUE_HEADER in carrier else "baggage"
        gate = Gate(Policy(mode="quarantine", trust="signed"), KEYS_A)
        with gate.enter(carrier, hop="worker", unit="t", header=header) as entry:
            assert entry.envelope is not None and entry.outcome == "quarantined"
            assert entry.envelope.replace(trace_id=TRACE_ONE) == Envelope(
                TRACE_ONE, attribution="quarantined"
            )


@FAST
@given(envelopes)
def test_signing_keys_rotate(envelope: Envelope) -> None:
    old_only = Keys(signing_keys=(KEY_A,))
    new_only = Keys(signing_keys=(KEY_B,))
    rotating = Keys(signing_keys=(KEY_B, KEY_A))  # signs with the new key, accepts both
    other = Keys(signing_keys=(KEY_C,))
    for signer in (old_only, new_only, rotating):
        header = encode_header(envelope, signer)
        assert decode_header(header, rotating) == (envelope, ())
    assert decode_header(encode_header(envelope, rotating), old_only)[0] is None
    assert decode_header(encode_header(envelope, old_only), new_only)[0] is None
    decoded, problems = decode_header(encode_header(envelope, rotating), other)
    assert decoded is None and [p.code for p in problems] == ["bad_signature"]


# -- OpenTelemetry interop --------------------------------------------------------------------

PROPAGATOR = W3CBaggagePropagator()


@FAST
@given(envelopes, foreign_lists, st.booleans())
def test_opentelemetry_reads_our_carrier(
    envelope: Envelope, foreign: list[str], signed: bool
) -> None:
    keys = KEYS_A if signed else None
    carrier = {"baggage": ",".join(foreign)} if foreign else {}
    assert encode(envelope, carrier, keys) == ()
    seen = otel_baggage.get_all(PROPAGATOR.extract(carrier, context=Context()))
    ours = {k: v for k, v in seen.items() if str(k).startswith(PREFIX)}
    assert ours == members_of(encode_header(envelope, keys))
    assert ours[PREFIX + "trace_id"] == envelope.trace_id
    for name in FIELDS[1:]:
        assert ours.get(PREFIX + name) == getattr(envelope, name)


@FAST
@given(
    envelopes,
    st.dictionaries(foreign_keys.filter(lambda k: "%" not in k), st.text(max_size=20), max_size=4),
    st.booleans(),
)
def test_we_read_a_carrier_opentelemetry_injected(
    envelope: Envelope, foreign: dict[str, str], signed: bool
) -> None:
    keys = KEYS_A if signed else None
    context = Context()
    for key, value in foreign.items():
        context = otel_baggage.set_baggage(key, value, context)
    for key, value in members_of(encode_header(envelope, keys)).items():
        context = otel_baggage.set_baggage(key, value, context)  # OTel percent-encodes values
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=context)
    assert decode(carrier, keys) == (envelope, ())


# -- the gate's decision cache ----------------------------------------------------------------

EDGE = EdgeHeaders(tenant="x-tenant-id", user="x-user-id")
POLICIES = [
    Policy(
        mode=mode,  # type: ignore[arg-type]
        trust=trust,  # type: ignore[arg-type]
        defaults=STAMP_DEFAULTS if mode == "stamp" else {},
        extra_keys=("cost_center",),
        edge_headers=EDGE,
    )
    for mode in ("enforce", "quarantine", "stamp")
    for trust in ("all", "signed", "none")
]
GATE_KEYS = [KEYS_A, Keys(hash_key=HASH_KEY)]


def _plain(env: Envelope, other: str) -> str:
    return encode_header(env)


def _without(entry: str) -> Callable[[Envelope, str], str]:
    return lambda env, other: ",".join(
        m for m in encode_header(env).split(",") if not m.startswith(PREFIX + entry + "=")
    )


def _pad_just_over(env: Envelope, other: str) -> str:
    text = encode_header(env) + ",pad="
    return text + "p" * (MAX_BAGGAGE_BYTES + 1 + len(other) % 40 - len(text))


def _folded(env: Envelope, other: str) -> str:
    """The last entry folded into the value of the one before it (the s1 folding attack)."""
    body, signature = encode_header(env, KEYS_A).rsplit(",ownership.sig=", 1)
    head, last = body.rsplit(",ownership.", 1)
    key, value = last.split("=", 1)
    return f"{head}%0A{key}%3D{value},ownership.sig={signature}"


#: How a request's baggage is made from (its envelope, another trace id). Most are hostile.
RECIPES: dict[str, Callable[[Envelope, str], str]] = {
    "plain": _plain,
    "signed": lambda env, other: encode_header(env, KEYS_A),
    "signed_ows": lambda env, other: encode_header(env, KEYS_A).replace("sig=", "sig =", 1),
    "wrong_key": lambda env, other: encode_header(env, KEYS_B),
    "folded": _folded,
    "old_format": lambda env, other: encode_header(env, KEYS_A).replace("sig=s2:", "sig=s1:"),
    "signed_odd_space": lambda env, other: encode_header(env, KEYS_A).replace("=", "\xa0=", 1),
    "tampered": lambda env, other: encode_header(env, KEYS_A).replace(
        "ownership.v=1", "ownership.v=1,ownership.owner_team=forged"
    ),
    "no_trace": _without("trace_id"),
    "no_version": _without("v"),
    "trace_only": lambda env, other: f"ownership.trace_id={env.trace_id}",
    "v2": lambda env, other: encode_header(env).replace("ownership.v=1", "ownership.v=2"),
    "dup_field": lambda env, other: encode_header(env) + ",ownership.owner_team =forged",
    "dup_trace_ows": lambda env, other: encode_header(env) + f",ownership.trace_id ={other}",
    "dup_trace_space": lambda env, other: encode_header(env) + f", ownership.trace_id={other}",
    "dup_trace_plain": lambda env, other: encode_header(env) + f",ownership.trace_id={other}",
    "email": lambda env, other: encode_header(env) + ",ownership.tenant=alice@example.com",
    "bad_percent": lambda env, other: encode_header(env) + ",ownership.x.cost_center=%C3%28",
    "oversized": lambda env, other: encode_header(env) + ",junk=" + "J" * 9000,
    "just_over": _pad_just_over,
    "many_before": lambda env, other: "a=1," * 185 + encode_header(env),
    "many_after": lambda env, other: encode_header(env) + ",a=1" * 185,
    "ows": lambda env, other: encode_header(env).replace(",", " , "),
    "upper_trace": lambda env, other: encode_header(env).replace(env.trace_id, other.upper()),
    "zero_trace": lambda env, other: encode_header(env).replace(env.trace_id, "0" * 32),
    "foreign_around": lambda env, other: f"sentry-env=prod,{encode_header(env)},k=v;p",
}
EDGE_VALUES = {
    "x-owner-team": ["search", "a,b", "bad team", "t\r\nx"],
    "x-workflow-id": ["triage", ""],
    "x-feature": ["summarize"],
    "x-tenant-id": ["alice@example.com", "", "x" * 300, "a\x00b"],
    "x-user-id": ["u-1", "h1:" + "b" * 32],
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A client: the same ownership on every request; only trace ids change."""

    recipe: str | None  # None: no baggage at all
    envelope: Envelope
    edge: tuple[tuple[str, str], ...]
    unit: str


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    edge = draw(
        st.lists(
            st.sampled_from(list(EDGE_VALUES)).flatmap(
                lambda h: st.sampled_from(EDGE_VALUES[h]).map(lambda v: (h, v))
            ),
            max_size=3,
            unique_by=lambda hv: hv[0],
        )
    )
    return Recipe(
        recipe=draw(st.none() | st.sampled_from(sorted(RECIPES))),
        envelope=draw(envelopes),
        edge=tuple(edge),
        unit=draw(st.sampled_from(["/a", "/b"])),
    )


TRACEPARENT_KINDS = ["none", "valid", "garbage", "zero"]


@dataclasses.dataclass(frozen=True)
class Request:
    client: int
    trace_id: str  # the envelope's trace id on this request
    other: str  # a second trace id (duplicates, traceparent)
    traceparent: str


requests = st.builds(
    Request,
    client=st.integers(0, 4),
    trace_id=trace_ids,
    other=trace_ids,
    traceparent=st.sampled_from(TRACEPARENT_KINDS),
)


def carrier_of(client: Recipe, request: Request) -> dict[str, str]:
    carrier = dict(client.edge)
    if client.recipe is not None:
        envelope = client.envelope.replace(trace_id=request.trace_id)
        carrier["baggage"] = RECIPES[client.recipe](envelope, request.other)
    if request.traceparent == "valid":
        carrier["traceparent"] = f"00-{request.other}-00f067aa0ba902b7-01"
    elif request.traceparent == "garbage":
        carrier["traceparent"] = f"zz-{request.other}"
    elif request.traceparent == "zero":
        carrier["traceparent"] = "00-" + "0" * 32 + "-00f067aa0ba902b7-01"
    return carrier


def admit(gate: Gate, carrier: dict[str, str], unit: str) -> tuple[Any, str]:
    """What one entry decided: everything but the trace id, and the trace id."""
    with gate.enter(carrier, hop="http", unit=unit, edge=True) as entry:
        return summary(entry), entry.trace_id


def summary(entry: Entry) -> tuple[Any, ...]:
    envelope = entry.envelope
    revalidated(envelope)
    if envelope is not None:
        assert envelope.trace_id == entry.trace_id
    rest = None if envelope is None else envelope.replace(trace_id=TRACE_ONE)
    return (entry.outcome, entry.missing, entry.problems, rest, entry.hop, entry.unit)


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(POLICIES))),
    st.sampled_from(range(len(GATE_KEYS))),
    st.lists(recipes(), min_size=1, max_size=5),
    st.lists(requests, min_size=1, max_size=25),
)
def test_the_decision_cache_never_mixes_requests(
    policy_index: int, keys_index: int, clients: list[Recipe], sequence: list[Request]
) -> None:
    policy, keys = POLICIES[policy_index], GATE_KEYS[keys_index]
    # The same decisions without any cache: with a resolver (that adds nothing), the gate
    # decides every carrier from scratch, trace id included.
    uncached = Gate(dataclasses.replace(policy, resolver=lambda inbound: None), keys)
    cached = Gate(policy, keys)
    sent: set[str] = set()
    minted: list[str] = []
    for request in sequence:
        client = clients[request.client % len(clients)]
        carrier = carrier_of(client, request)
        sent.update((request.trace_id, request.other))

        decided, trace_id = admit(cached, carrier, client.unit)
        fresh, fresh_trace = admit(Gate(policy, keys), carrier, client.unit)
        again, again_trace = admit(Gate(policy, keys), carrier, client.unit)
        reference, reference_trace = admit(uncached, carrier, client.unit)

        assert decided == fresh == again == reference
        if fresh_trace == again_trace:  # the carrier determines the trace id
            assert trace_id == fresh_trace == reference_trace
        else:  # neither the envelope nor the traceparent gave one: each request gets its own
            assert reference_trace not in (fresh_trace, again_trace)
            minted.append(trace_id)
    assert len(set(minted)) == len(minted)
    assert not sent.intersection(minted)

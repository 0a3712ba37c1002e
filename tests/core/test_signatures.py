"""Signatures that cannot be folded (issue 11, item 1).

The signed text of format ``s1`` joined percent-decoded ``key=value`` lines with newlines, so
one entry whose value held ``%0A`` signed like two entries: a sender without the key could drop
fields or change ``attribution`` and keep a valid signature. Format ``s2`` signs a
length-prefixed canonical form of the envelope, and a signed envelope is believed only when
every one of its ownership entries is valid. ``s1`` signatures are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ownership_ctx import Envelope, Gate, Keys, Policy, decode, decode_header, encode_header
from ownership_ctx.codec import PREFIX, _signed_entries, entries_of, parse, signature_problem
from ownership_ctx.envelope import ATTRIBUTIONS, FORMAT_VERSION
from ownership_ctx.hashing import signed_text, signed_text_around, value_text

KEY = b"signature-test-key-0123456789"
OLD_KEY = b"signature-test-old-key-0123456789"
KEYS = Keys(signing_keys=(KEY,))
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
LEGIT = Envelope(trace_id=TRACE, owner_team="search", feature="x", attribution="quarantined")


def s2_signature(key: bytes, entries: dict[str, str]) -> str:
    """An s2 signature computed here, from the documented format, not by the code under test."""
    text = b"ownership_ctx envelope signature s2\n"
    for k in sorted(entries):
        kb, vb = k.encode(), entries[k].encode()
        text += str(len(kb)).encode() + b":" + kb + str(len(vb)).encode() + b":" + vb
    return "s2:" + hmac.new(key, text, hashlib.sha256).hexdigest()[:32]


def s1_signature(key: bytes, entries: dict[str, str]) -> str:
    """The old, foldable format: newline-joined ``key=value`` lines, sorted by key."""
    text = "\n".join(f"{k}={entries[k]}" for k in sorted(entries)).encode()
    return "s1:" + hmac.new(key, text, hashlib.sha256).hexdigest()[:32]


def header(entries: dict[str, str], signature: str) -> str:
    return ",".join(f"{PREFIX}{k}={v}" for k, v in entries.items()) + f",{PREFIX}sig={signature}"


# -- the format ------------------------------------------------------------------------------


def test_the_signature_is_the_documented_s2_format() -> None:
    entries = {
        "v": "1",
        "trace_id": TRACE,
        "owner_team": "search",
        "feature": "x",
        "attribution": "quarantined",
    }
    assert entries_of(LEGIT) == entries
    expected = s2_signature(KEY, entries)
    assert KEYS.sign(entries) == expected
    assert encode_header(LEGIT, KEYS).endswith(f",{PREFIX}sig={expected}")


# -- the folding attack ----------------------------------------------------------------------

#: What a sender without the key made of a signed header: ``feature`` folded into the
#: attribution's value, so that under s1 the signed text stayed the same.
FOLDED = {
    "v": "1",
    "trace_id": TRACE,
    "owner_team": "search",
    "attribution": "quarantined%0Afeature%3Dx",
}
#: ``owner_team`` folded into the feature's value: under s1, the envelope lost its owner.
FOLDED_OWNER = {
    "v": "1",
    "trace_id": TRACE,
    "feature": "x%0Aowner_team%3Dsearch",
    "attribution": "quarantined",
}


def _decoded(entries: dict[str, str]) -> dict[str, str]:
    from urllib.parse import unquote

    return {k: unquote(v) for k, v in entries.items()}


@pytest.mark.parametrize("forged", [FOLDED, FOLDED_OWNER], ids=["folded_feature", "folded_owner"])
def test_the_fold_would_have_kept_an_s1_signature(forged: dict[str, str]) -> None:
    """The attack is real: under s1, the forged entries signed exactly like the legit ones."""
    legit = entries_of(LEGIT)
    assert s1_signature(KEY, _decoded(forged)) == s1_signature(KEY, legit)
    assert signed_text(_decoded(forged)) != signed_text(legit)


@pytest.mark.parametrize("forged", [FOLDED, FOLDED_OWNER], ids=["folded_feature", "folded_owner"])
def test_a_folded_signed_envelope_is_refused(forged: dict[str, str]) -> None:
    # The legit s2 signature, carried over to the forged entries.
    signature = encode_header(LEGIT, KEYS).rsplit("sig=", 1)[1]
    text = header(forged, signature)
    envelope, problems = decode_header(text, KEYS)
    assert envelope is None and problems[-1].code == "bad_signature"
    envelope, problems = decode({"baggage": text}, KEYS)
    assert envelope is None and problems[-1].code == "bad_signature"
    # Refused before the MAC is even computed: the entries break their grammar.
    problem = signature_problem(parse(text), signature, KEYS)
    assert problem is not None and "valid ownership entries" in problem.detail


@pytest.mark.parametrize("mode", ["enforce", "quarantine", "stamp"])
@pytest.mark.parametrize("trust", ["all", "signed"])
@pytest.mark.parametrize("forged", [FOLDED, FOLDED_OWNER], ids=["folded_feature", "folded_owner"])
def test_a_folded_envelope_never_comes_out_attributed(
    forged: dict[str, str], mode: str, trust: str
) -> None:
    signature = encode_header(LEGIT, KEYS).rsplit("sig=", 1)[1]
    policy = Policy(
        mode=mode,  # type: ignore[arg-type]
        trust=trust,  # type: ignore[arg-type]
        required=("owner_team",),
        defaults={"owner_team": "platform"} if mode == "stamp" else {},
    )
    gate = Gate(policy, KEYS)
    for carrier in (
        {"baggage": header(forged, signature)},
        {"baggage": "sentry-env=prod," + header(forged, signature)},
    ):
        with gate.enter(carrier, hop="http", unit="/", edge=True) as entry:
            assert ("sig", "bad_signature") in [(p.field, p.code) for p in entry.problems]
            if entry.envelope is None:
                assert mode == "enforce" and entry.rejected
                continue
            # None of the forged entries is believed, and the unit is not "attributed".
            assert entry.envelope.owner_team != "search"
            assert entry.envelope.feature is None
            assert entry.outcome != "attributed"
            assert entry.envelope.attribution != "attributed"


@pytest.mark.parametrize("mode", ["enforce", "quarantine", "stamp"])
def test_the_legit_signed_quarantined_envelope_stays_quarantined(mode: str) -> None:
    policy = Policy(
        mode=mode,  # type: ignore[arg-type]
        trust="signed",
        required=("owner_team",),
        defaults={"owner_team": "platform"} if mode == "stamp" else {},
    )
    gate = Gate(policy, KEYS)
    with gate.enter({"baggage": encode_header(LEGIT, KEYS)}, hop="http", unit="/") as entry:
        assert entry.envelope == LEGIT and entry.problems == ()


# -- every entry valid before the MAC --------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ",ownership.unknown=1",  # an entry the signature would not cover
        ",ownership.owner_team=search",  # a duplicate, even of the same value
        ",ownership.x.Bad=1",
        ",ownership.tenant=alice@example.com",
        ",ownership.feature=%zz",
        ",ownership.feature=a b",  # outside the W3C grammar
        ",ownership.feature\x0b=x",
        ",ownership.feature",
    ],
)
def test_a_signed_envelope_with_any_invalid_entry_is_refused(extra: str) -> None:
    envelope = Envelope(trace_id=TRACE, owner_team="search")
    text = encode_header(envelope, KEYS) + extra
    decoded, problems = decode_header(text, KEYS)
    assert decoded is None and problems[-1].code == "bad_signature"
    # Unsigned, the same text reads as an envelope with problems.
    unsigned = encode_header(envelope) + extra
    decoded, problems = decode_header(unsigned, KEYS)
    assert problems


def test_a_signed_envelope_may_carry_w3c_properties_and_whitespace() -> None:
    envelope = Envelope(trace_id=TRACE, owner_team="search")
    text = encode_header(envelope, KEYS).replace("=search", " = search ;prop;k=v", 1)
    assert decode_header(text, KEYS) == (envelope, ())


@pytest.mark.parametrize(
    "signature",
    [
        "s2:" + "0" * 31,
        "s2:" + "A" * 32,
        "s3:" + "0" * 32,
        "s2:" + "0" * 33,
        "",
        "s2%3A" + "0" * 32,
    ],
)
def test_a_malformed_signature_is_refused_not_ignored(signature: str) -> None:
    text = (
        encode_header(Envelope(trace_id=TRACE, owner_team="search")) + f",ownership.sig={signature}"
    )
    decoded, problems = decode_header(text, KEYS)
    if signature.startswith("s2%3A"):
        # Percent-encoded (as OpenTelemetry's propagator writes it): read, then checked.
        assert decoded is None and problems[-1].detail == "signature does not verify"
    else:
        assert decoded is None and problems[-1].code == "bad_signature"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda text: text.replace("sig=s2:", 'sig="2:'),  # outside the W3C grammar
        lambda text: text.replace("sig=s2:", "sig=s2:%C3%28"),  # undecodable
        lambda text: text + "," + text.rsplit(",", 1)[1],  # the signature twice
        lambda text: text + ",ownership.sig=" + "0" * 5000,  # a second one, oversized
        lambda text: text.replace("sig=", "sig\x0b="),  # odd whitespace
    ],
    ids=["grammar", "encoding", "duplicate", "oversized", "whitespace"],
)
def test_an_unreadable_signature_is_refused_not_ignored(mangle: Any) -> None:
    envelope = Envelope(trace_id=TRACE, owner_team="search")
    text = mangle(encode_header(envelope, KEYS))
    decoded, problems = decode_header(text, KEYS)
    assert decoded is None and problems[-1].code == "bad_signature"
    gate = Gate(Policy(mode="quarantine", trust="all"), KEYS)
    with gate.enter({"baggage": text}, hop="http", unit="/") as entry:
        assert entry.envelope is not None and entry.envelope.owner_team is None


def test_a_percent_encoded_signature_verifies() -> None:
    """OpenTelemetry's propagator re-encodes ':' and '/'; the signature covers values, so a
    re-encoded envelope still verifies."""
    envelope = Envelope(trace_id=TRACE, owner_team="a:b/c", tenant="h1:" + "a" * 32)
    text = encode_header(envelope, KEYS).replace(":", "%3A").replace("/", "%2F")
    assert decode_header(text, KEYS) == (envelope, ())


# -- old signatures --------------------------------------------------------------------------


def test_an_s1_signature_is_refused_even_when_it_verifies_under_the_old_format() -> None:
    entries = entries_of(LEGIT)
    text = header(entries, s1_signature(KEY, entries))
    decoded, problems = decode_header(text, KEYS)
    assert decoded is None
    assert problems[-1].code == "bad_signature" and "s1" in problems[-1].detail
    for trust in ("all", "signed"):
        gate = Gate(Policy(mode="quarantine", trust=trust), KEYS)  # type: ignore[arg-type]
        with gate.enter({"baggage": text}, hop="http", unit="/") as entry:
            assert entry.envelope is not None and entry.envelope.owner_team is None
            assert entry.outcome == "quarantined"
            assert "s1" in " ".join(entry.reasons())


def test_without_keys_a_signature_is_not_checked() -> None:
    """A receiver with no signing keys cannot check a signature: it reads the envelope as an
    unsigned one (and a policy that trusts only signed envelopes ignores it)."""
    text = encode_header(LEGIT, KEYS)
    assert decode_header(text) == (LEGIT, ())


# -- rotation --------------------------------------------------------------------------------


def test_key_rotation_signs_with_the_first_key_and_verifies_with_all() -> None:
    old_only = Keys(signing_keys=(OLD_KEY,))
    rotating = Keys(signing_keys=(KEY, OLD_KEY))
    new_only = Keys(signing_keys=(KEY,))
    assert encode_header(LEGIT, rotating) == encode_header(LEGIT, new_only)
    assert decode_header(encode_header(LEGIT, old_only), rotating) == (LEGIT, ())
    assert decode_header(encode_header(LEGIT, rotating), new_only) == (LEGIT, ())
    assert decode_header(encode_header(LEGIT, old_only), new_only)[0] is None


# -- no two envelopes share a signed text ----------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "._:/-"
trace_ids = st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
hashed = st.text("0123456789abcdef", min_size=32, max_size=32).map(lambda s: "h1:" + s)
small_tokens = st.text(TOKEN[:6] + "._:/-", min_size=1, max_size=4)  # collisions likely
envelopes = st.builds(
    Envelope,
    trace_id=st.sampled_from([TRACE, "0" * 31 + "1"]) | trace_ids,
    owner_team=st.none() | small_tokens,
    workflow_id=st.none() | small_tokens,
    feature=st.none() | small_tokens,
    tenant=st.none() | st.sampled_from(["h1:" + "a" * 32]) | hashed,
    user=st.none() | st.sampled_from(["h1:" + "a" * 32]) | hashed,
    extras=st.dictionaries(st.sampled_from(["a", "b", "cost_center"]), small_tokens, max_size=3),
    attribution=st.sampled_from(ATTRIBUTIONS),
    version=st.just(FORMAT_VERSION),
)


@settings(max_examples=500, deadline=None)
@given(envelopes, envelopes)
def test_no_two_distinct_envelopes_share_a_signed_text(a: Envelope, b: Envelope) -> None:
    same_text = signed_text(entries_of(a)) == signed_text(entries_of(b))
    assert same_text == (a == b)
    if a != b:
        assert encode_header(a, KEYS).rsplit("sig=")[1] != encode_header(b, KEYS).rsplit("sig=")[1]


# Arbitrary text, including the separators of both formats: '\n', '=', ':', digits.
nasty = st.text(
    alphabet=st.sampled_from(["a", "b", "=", "\n", ":", "1", "2", ",", "é"]), max_size=6
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(nasty, nasty, max_size=4), st.dictionaries(nasty, nasty, max_size=4))
def test_no_two_distinct_sets_of_entries_share_a_signed_text(
    a: dict[str, str], b: dict[str, str]
) -> None:
    assert (signed_text(a) == signed_text(b)) == (a == b)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(nasty, nasty, min_size=1, max_size=4))
def test_signed_text_reads_back_unambiguously(entries: dict[str, str]) -> None:
    """A reader of the documented format recovers exactly the entries: nothing is ambiguous."""
    text = signed_text(entries)
    head = b"ownership_ctx envelope signature s2\n"
    assert text.startswith(head)
    rest, out = text[len(head) :], []
    while rest:
        length, _, rest = rest.partition(b":")
        out.append(rest[: int(length)].decode())
        rest = rest[int(length) :]
    assert dict(zip(out[::2], out[1::2], strict=True)) == entries


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(nasty, nasty, max_size=4), nasty, nasty)
def test_the_signed_text_around_one_entry_is_the_signed_text(
    entries: dict[str, str], key: str, value: str
) -> None:
    """The gate computes the part of the signed text around the trace id once per sender."""
    before, after = signed_text_around(entries, key)
    assert before + value_text(value) + after == signed_text({**entries, key: value})


@settings(max_examples=300, deadline=None)
@given(envelopes)
def test_a_receiver_signs_over_the_entries_the_sender_signed(envelope: Envelope) -> None:
    assert _signed_entries(parse(encode_header(envelope))) == entries_of(envelope)

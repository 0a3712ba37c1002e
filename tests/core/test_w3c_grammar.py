"""Baggage parsing follows the W3C grammar (issue 11, item 6), with OpenTelemetry as the oracle.

Optional whitespace is only space and tab: a member with a vertical tab, form feed, NBSP, NEL
or any other whitespace around its key or value is invalid, and so is a member with an invalid
property. The property tests below hand the same header to OpenTelemetry's own
``W3CBaggagePropagator`` and to our parser: every ownership entry we accept, OpenTelemetry
accepts too, with the same value. (The converse is not required: we are stricter about field
values, duplicates and percent-encoding.)
"""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context

from ownership_ctx.codec import PREFIX, Parsed, parse

SCALE = int(os.environ.get("OWNERSHIP_CTX_PROPERTY_SCALE", "1"))
PROPAGATOR = W3CBaggagePropagator()
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BASE = f"ownership.v=1,ownership.trace_id={TRACE}"

#: Every kind of whitespace a parser might be tempted to strip; W3C allows the first two only.
WHITESPACE = [
    " ",
    "\t",
    "\x0b",  # vertical tab
    "\x0c",  # form feed
    "\r",
    "\n",
    "\x1c",
    "\x1f",
    "\x85",  # NEL
    "\xa0",  # NBSP
    "\u1680",
    "\u2003",
    "\u2028",
    "\u202f",
    "\u3000",
    "\ufeff",
]
NAMES = ["owner_team", "workflow_id", "feature", "tenant", "user", "attribution", "x.cost_center"]
GOOD = {
    "owner_team": ["search", "a.b:c/d-e_f"],
    "workflow_id": ["ticket-triage"],
    "feature": ["summarize"],
    "tenant": ["h1:" + "a" * 32, "h1%3A" + "b" * 32],
    "user": ["h1:" + "c" * 32],
    "attribution": ["quarantined", "stamped", "unattributed"],
    "x.cost_center": ["cc-1", "cc%2D2"],
}
ODD = string.ascii_letters[:4] + "%=;,\"\\ '+/:" + "\x7f\x00é€" + "".join(WHITESPACE)

ows = st.text(" \t", max_size=2)
odd_space = st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=2)
valid_props = st.sampled_from(["p", "p=v", " p = v ", "\tp\t", "k=", "a=b=c", "p=%20"])
odd_props = st.text(st.sampled_from(ODD.replace(",", "")), max_size=4)
odd_values = st.text(st.sampled_from(ODD), min_size=1, max_size=6)


@st.composite
def members(draw: st.DrawFn, name: str) -> str:
    """One ``ownership.<name>`` member: a W3C-valid one with a good value, then (most often)
    one defect: odd whitespace somewhere, an odd value, an odd property."""
    spaces = [draw(ows) for _ in range(5)]
    value = draw(st.sampled_from(GOOD[name]))
    props = [draw(valid_props) for _ in range(draw(st.integers(0, 2)))]
    defect = draw(st.sampled_from(["none", "space", "value", "value_suffix", "property"]))
    if defect == "space":
        spaces[draw(st.integers(0, 4))] += draw(odd_space)
    elif defect == "value":
        value = draw(odd_values)
    elif defect == "value_suffix":
        value += draw(odd_values)
    elif defect == "property":
        props.insert(draw(st.integers(0, len(props))), draw(odd_props))
    a, b, c, d, e = spaces
    return f"{a}{PREFIX}{name}{b}={c}{value}{d}" + "".join(";" + p for p in props) + e


def accepted(parsed: Parsed, name: str) -> str | None:
    """The value our parser took for ``ownership.<name>``, or None."""
    if name == "attribution":
        return None if parsed.attribution == "attributed" else parsed.attribution
    if name.startswith("x."):
        return dict(parsed.extras).get(name[2:])
    return parsed.fields.get(name)


def opentelemetry_reads(header: str) -> dict[str, object]:
    context = PROPAGATOR.extract({"baggage": header}, context=Context())
    return dict(otel_baggage.get_all(context))


def without_properties(value: object) -> object:
    # OpenTelemetry keeps a member's properties in its value ("v;p=1"); W3C properties are
    # metadata, which we do not read.
    return value.split(";")[0].rstrip(" \t") if isinstance(value, str) else value


def assert_oracle_agrees(header: str, names: list[str]) -> None:
    parsed = parse(header)
    seen = opentelemetry_reads(header)
    for name in names:
        ours = accepted(parsed, name)
        event("accepted by us" if ours is not None else "rejected by us")
        if ours is not None:
            assert PREFIX + name in seen, (name, header)
            assert without_properties(seen[PREFIX + name]) == ours, (name, header)


@settings(max_examples=400 * SCALE, deadline=None)
@given(st.sampled_from(NAMES).flatmap(lambda n: st.tuples(st.just(n), members(n))))
def test_what_opentelemetry_rejects_in_one_member_we_reject(named: tuple[str, str]) -> None:
    name, member = named
    for header in (f"{BASE},{member}", f"{member},{BASE}", f"a=1,{member},b=2;p,{BASE}"):
        assert_oracle_agrees(header, [name])


@st.composite
def headers(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A whole header: ours, foreign members of any size, hostile members, up to ~200."""
    parts = [BASE]
    names = draw(st.lists(st.sampled_from(NAMES), max_size=5))
    for name in names:
        parts.append(draw(members(name)))
    filler = draw(st.integers(0, 200))
    big = draw(st.lists(st.integers(4000, 4200), max_size=3))
    parts += [f"f{i}=v" for i in range(filler)] + [f"b{i}=" + "x" * n for i, n in enumerate(big)]
    order = draw(st.permutations(range(len(parts))))
    return ",".join(parts[i] for i in order), names


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers())
def test_what_opentelemetry_rejects_in_a_whole_header_we_reject(
    header_and_names: tuple[str, list[str]],
) -> None:
    header, names = header_and_names
    assert_oracle_agrees(header, names)


# -- the rules, one by one ---------------------------------------------------------------------


@pytest.mark.parametrize("space", WHITESPACE[2:])
@pytest.mark.parametrize(
    "template",
    [
        "{s}ownership.owner_team=search",
        "ownership.owner_team{s}=search",
        "ownership.owner_team={s}search",
        "ownership.owner_team=search{s}",
        "ownership.owner_team=search{s};p",
        "ownership.owner_team=search;{s}p",
    ],
)
def test_only_space_and_tab_are_optional_whitespace(template: str, space: str) -> None:
    member = template.format(s=space)
    parsed = parse(f"{BASE},{member}")
    assert "owner_team" not in parsed.fields
    assert PREFIX + "owner_team" not in opentelemetry_reads(f"{BASE},{member}")


@pytest.mark.parametrize("space", [" ", "\t", " \t "])
def test_space_and_tab_are_optional_whitespace(space: str) -> None:
    s = space
    header = f"{BASE},{s}ownership.owner_team{s}={s}search{s};{s}p{s}={s}v{s};q{s},{s}k=v"
    assert parse(header).fields["owner_team"] == "search"
    assert without_properties(opentelemetry_reads(header)[PREFIX + "owner_team"]) == "search"


@pytest.mark.parametrize(
    "properties",
    [";", ";;", "; ", ";=v", ";p=v v", ';p="v"', ";p\\q", ";p=\x0b", ";é", ";p=v;"],
)
def test_a_member_with_an_invalid_property_is_invalid(properties: str) -> None:
    header = f"{BASE},ownership.owner_team=search{properties}"
    parsed = parse(header)
    assert "owner_team" not in parsed.fields
    assert [(p.field, p.code) for p in parsed.problems] == [("owner_team", "malformed")]
    assert PREFIX + "owner_team" not in opentelemetry_reads(header)


@pytest.mark.parametrize("value", ["sea rch", 'se"arch', "sea\\rch", "search\x7f", "séarch"])
def test_a_value_outside_the_baggage_octets_is_invalid(value: str) -> None:
    header = f"{BASE},ownership.owner_team={value}"
    assert "owner_team" not in parse(header).fields
    assert PREFIX + "owner_team" not in opentelemetry_reads(header)

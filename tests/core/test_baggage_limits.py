"""Our envelope never loses to foreign baggage (issue 11, item 5).

When the outgoing ``baggage`` would pass 180 members or 8192 bytes, the ``ownership.*``
entries stay and whole foreign members are dropped (never a partial one, never altered),
earliest kept first, each drop counted and logged once per reason without the members'
content. Every way out shares the rule: `codec.encode`, the httpx transports (sync and async),
the requests adapter and the OpenTelemetry propagator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
from requests.adapters import HTTPAdapter

from ownership_ctx import Envelope, Keys, bind, codec, decode, encode_header, events
from ownership_ctx.codec import MAX_BAGGAGE_BYTES, MAX_BAGGAGE_ENTRIES, encode
from ownership_ctx.http import AsyncOwnershipTransport, OwnershipAdapter, OwnershipTransport
from ownership_ctx.otel import OwnershipPropagator

KEYS = Keys(signing_keys=(b"baggage-limits-signing-key-0123",))
ENVELOPE = Envelope(
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    owner_team="search",
    workflow_id="ticket-triage",
    feature="summarize",
    tenant="h1:" + "a" * 32,
)
OURS = encode_header(ENVELOPE, KEYS)
OURS_MEMBERS = OURS.count(",") + 1
SECRET = "zzsecretzz"  # in every foreign member: must never be logged
HOST = "billing.svc.internal"
COUNTERS = ("foreign_baggage_dropped_members", "foreign_baggage_dropped_bytes")


# -- the ways out, each taking a baggage value and returning what was sent ---------------------


def via_encode(baggage: str) -> str:
    carrier = {"baggage": baggage}
    encode(ENVELOPE, carrier, KEYS)
    return carrier["baggage"]


def _echo(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"baggage": request.headers.get("baggage")})


def via_httpx(baggage: str) -> str:
    transport = OwnershipTransport(httpx.MockTransport(_echo), allow_hosts=[HOST], keys=KEYS)
    with bind(ENVELOPE), httpx.Client(transport=transport) as client:
        sent: str = client.get(f"http://{HOST}/x", headers={"baggage": baggage}).json()["baggage"]
    return sent


def via_httpx_async(baggage: str) -> str:
    async def go() -> str:
        transport = AsyncOwnershipTransport(
            httpx.MockTransport(_echo), allow_hosts=[HOST], keys=KEYS
        )
        async with httpx.AsyncClient(transport=transport) as client:
            with bind(ENVELOPE):
                response = await client.get(f"http://{HOST}/x", headers={"baggage": baggage})
        sent: str = response.json()["baggage"]
        return sent

    return asyncio.run(go())


def via_requests(baggage: str) -> str:
    sent: list[str] = []

    def fake_send(self: Any, request: requests.PreparedRequest, *args: Any, **kw: Any) -> Any:
        sent.append(request.headers["baggage"])
        response = requests.Response()
        response.status_code = 200
        return response

    original = HTTPAdapter.send
    HTTPAdapter.send = fake_send  # type: ignore[method-assign]
    try:
        with requests.Session() as session, bind(ENVELOPE):
            session.mount("http://", OwnershipAdapter(allow_hosts=[HOST], keys=KEYS))
            session.get(f"http://{HOST}/x", headers={"baggage": baggage})
    finally:
        HTTPAdapter.send = original  # type: ignore[method-assign]
    return sent[0]


def via_otel_propagator(baggage: str) -> str:
    carrier = httpx.Headers({"host": f"{HOST}:8080", "baggage": baggage})
    with bind(ENVELOPE):
        OwnershipPropagator(allow_hosts=[HOST], keys=KEYS).inject(carrier)
    return carrier["baggage"]


WAYS_OUT: dict[str, Callable[[str], str]] = {
    "codec.encode": via_encode,
    "httpx": via_httpx,
    "httpx-async": via_httpx_async,
    "requests": via_requests,
    "otel-propagator": via_otel_propagator,
}


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    codec._warned_drops.clear()  # "logged once per process": start each test afresh
    yield
    codec._warned_drops.clear()


def counted() -> dict[str, int]:
    return {name: events.stats[name] for name in COUNTERS}


def delta(before: dict[str, int]) -> dict[str, int]:
    return {name: events.stats[name] - before[name] for name in COUNTERS}


def foreign(i: int, size: int = 0) -> str:
    member = f"f{i}={SECRET}"
    return member + "x" * max(0, size - len(member))


# -- the cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("way", WAYS_OUT)
def test_too_many_members_drops_the_latest_foreign_ones(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    members = [foreign(i) for i in range(200)]
    room = MAX_BAGGAGE_ENTRIES - OURS_MEMBERS  # computed from the limits, not by the code
    before = counted()
    with caplog.at_level(logging.WARNING, "ownership_ctx"):
        sent = WAYS_OUT[way](",".join(members))
    assert sent == ",".join([*members[:room], OURS])
    assert len(sent.split(",")) == MAX_BAGGAGE_ENTRIES
    assert decode({"baggage": sent}, KEYS) == (ENVELOPE, ())
    assert delta(before) == {
        "foreign_baggage_dropped_members": 200 - room,
        "foreign_baggage_dropped_bytes": 0,
    }
    assert_logged_once_without_content(caplog, "180 members")


@pytest.mark.parametrize("way", WAYS_OUT)
def test_too_many_bytes_drops_whole_foreign_members(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Two big members (4000 bytes each) and small ones: the second big one cannot fit with
    # ours, the small ones after it still do. No member is ever cut.
    members = [foreign(0, 4000), foreign(1), foreign(2, 4000), foreign(3), foreign(4)]
    room = MAX_BAGGAGE_BYTES - len(OURS)
    expected_kept = [members[0], members[1], members[3], members[4]]
    assert sum(len(m) + 1 for m in expected_kept) <= room  # they fit ...
    assert sum(len(m) + 1 for m in [*expected_kept, members[2]]) > room  # ... the big one not
    before = counted()
    with caplog.at_level(logging.WARNING, "ownership_ctx"):
        sent = WAYS_OUT[way](",".join(members))
    assert sent == ",".join([*expected_kept, OURS])
    assert len(sent.encode()) <= MAX_BAGGAGE_BYTES
    assert decode({"baggage": sent}, KEYS) == (ENVELOPE, ())
    assert delta(before) == {
        "foreign_baggage_dropped_members": 0,
        "foreign_baggage_dropped_bytes": 1,
    }
    assert_logged_once_without_content(caplog, "8192 bytes")


@pytest.mark.parametrize("way", WAYS_OUT)
def test_when_everything_fits_nothing_is_dropped(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    members = [foreign(i) for i in range(MAX_BAGGAGE_ENTRIES - OURS_MEMBERS)]
    # Exactly at both limits: 180 members, 8192 bytes.
    members[0] = foreign(
        0, MAX_BAGGAGE_BYTES - len(OURS) - sum(len(m) + 1 for m in members[1:]) - 1
    )
    assert len(",".join([*members, OURS])) == MAX_BAGGAGE_BYTES
    before = counted()
    with caplog.at_level(logging.WARNING, "ownership_ctx"):
        sent = WAYS_OUT[way](",".join(members))
    assert sent == ",".join([*members, OURS])
    assert delta(before) == dict.fromkeys(COUNTERS, 0)
    assert not [r for r in caplog.records if r.name == "ownership_ctx"]


def test_stale_ownership_entries_are_replaced_not_counted_as_drops() -> None:
    stale = encode_header(ENVELOPE.replace(owner_team="stale"), KEYS)
    before = counted()
    sent = via_encode(f"a=1,{stale},b=2")
    assert sent == f"a=1,b=2,{OURS}"
    assert delta(before) == dict.fromkeys(COUNTERS, 0)


def test_each_reason_is_logged_once_and_counted_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    many = ",".join(foreign(i) for i in range(200))
    big = ",".join([foreign(0, 4090), foreign(1, 4090)])
    before = counted()
    with caplog.at_level(logging.WARNING, "ownership_ctx"):
        for _ in range(3):
            via_encode(many)
            via_encode(big)
    messages = [r.getMessage() for r in caplog.records if r.name == "ownership_ctx"]
    assert len(messages) == 2
    assert sum("180 members" in m for m in messages) == 1
    assert sum("8192 bytes" in m for m in messages) == 1
    room = MAX_BAGGAGE_ENTRIES - OURS_MEMBERS
    assert delta(before) == {
        "foreign_baggage_dropped_members": 3 * (200 - room),
        "foreign_baggage_dropped_bytes": 3,
    }


def test_encode_reports_drops_as_ignored_problems() -> None:
    carrier = {"baggage": ",".join(foreign(i) for i in range(200))}
    problems = encode(ENVELOPE, carrier, KEYS)
    assert [(p.code, p.severity) for p in problems] == [("foreign_baggage_dropped", "ignored")]
    assert SECRET not in str(problems)


def test_non_ascii_foreign_members_are_measured_in_bytes() -> None:
    wide = "k=" + "é" * 3000  # 3002 characters, 6002 bytes
    sent = via_encode(f"{wide},{wide},a=1")
    assert sent == f"{wide},a=1,{OURS}"
    assert len(sent.encode()) <= MAX_BAGGAGE_BYTES


def assert_logged_once_without_content(caplog: pytest.LogCaptureFixture, limit: str) -> None:
    records = [r for r in caplog.records if r.name == "ownership_ctx"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert limit in records[0].getMessage()
    assert SECRET not in caplog.text and "f1=" not in caplog.text

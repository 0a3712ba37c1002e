"""Hostile inputs through the real ASGI middleware, in every mode.

Each hostile request goes through `OwnershipMiddleware` around a small Starlette app, called
in-process: as raw ASGI scopes built by hand (so that bytes no HTTP client would send -- CR/LF,
NUL, invalid UTF-8 -- reach the middleware exactly as a server would hand them over), and
through httpx where httpx can send the bytes. Each case states what the policy must decide:

* enforce: ``400`` ``application/problem+json`` naming exactly the missing fields and the
  invalid ``(field, code)`` pairs; the handler never runs;
* quarantine: ``200``, the handler sees exactly the fields that survived, marked
  ``quarantined``;
* stamp: ``200``, the handler sees the surviving fields with the defaults filled in.

Never a 500, and the hostile raw value (the email, the forged team, the junk) never appears in
the response, the log records, the emitted events or any envelope the handler sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ownership_ctx import EdgeHeaders, Envelope, Keys, Policy, current, hash_identifier
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.codec import encode_header

HASH_KEY = b"hostile-test-hash-key-0123456789"
SIGN_KEY = b"hostile-test-signing-key-0123456789"
WRONG_KEY = b"hostile-test-attacker-key-0123456789"
KEYS = Keys(hash_key=HASH_KEY, signing_keys=(SIGN_KEY,))
ATTACKER = Keys(signing_keys=(WRONG_KEY,))

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{PARENT}-b7ad6b7169203331-01"
REQUIRED = ("owner_team", "workflow_id", "feature")
DEFAULTS = {"owner_team": "platform", "workflow_id": "unclassified", "feature": "default"}
GOOD_FIELDS = {"owner_team": "search", "workflow_id": "ticket-triage", "feature": "summarize"}
GOOD = Envelope(trace_id=TRACE, **GOOD_FIELDS)
GOOD_HEADER = encode_header(GOOD)  # ownership.v=1,ownership.trace_id=...,...
FORGED = "zzforgedzz"
PWN = "zzpwnzz"
ALICE = "alice@example.com"
BOB = "bob@example.org"
OWNERSHIP = tuple(["owner_team", "workflow_id", "feature", "tenant", "user"])
TRACE_ID = re.compile(r"[0-9a-f]{32}")


def without(*names: str) -> str:
    """The good header without some of its entries."""
    return ",".join(
        m for m in GOOD_HEADER.split(",") if m.split("=", 1)[0][len("ownership.") :] not in names
    )


def kept(*names: str) -> dict[str, str]:
    """The good fields but some."""
    return {k: v for k, v in GOOD_FIELDS.items() if k not in names}


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile request and what every mode must make of it."""

    id: str
    headers: tuple[tuple[bytes, bytes], ...]
    hostile: tuple[str, ...] = ()  # raw values that must never come back
    missing: tuple[str, ...] = ()  # required fields the policy finds missing
    invalid: tuple[tuple[str | None, str], ...] = ()  # (field, code) of invalid problems
    kept: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(GOOD_FIELDS))
    trace: str | None = None  # the trace id of the unit; None: freshly minted
    trust: str = "all"
    accept_unsigned: bool = True  # the migration setting; off by default in the library

    @property
    def flawed(self) -> bool:
        return bool(self.missing or self.invalid)


def h(name: str, value: str | bytes) -> tuple[bytes, bytes]:
    raw = value if isinstance(value, bytes) else value.encode("latin-1")
    return (name.encode(), raw)


def bag(value: str | bytes) -> tuple[bytes, bytes]:
    return h("baggage", value)


EDGE_GOOD = (h("x-workflow-id", "ticket-triage"), h("x-feature", "summarize"))
OVERSIZED = dict(missing=REQUIRED, invalid=((None, "oversized"),), kept={})
BAD_SIGNATURE = dict(missing=REQUIRED, invalid=(("sig", "bad_signature"),), kept={})
FORGED_ENVELOPE = GOOD.replace(owner_team=FORGED)


def _signature_cases(trust: str) -> list[Case]:
    tampered = encode_header(GOOD, KEYS).replace("owner_team=search", f"owner_team={FORGED}")
    made_up = encode_header(FORGED_ENVELOPE) + ",ownership.sig=s2:" + "0" * 32
    old_format = encode_header(FORGED_ENVELOPE) + ",ownership.sig=s1:" + "0" * 32
    return [
        Case(
            f"forged_signature_{trust}",
            (bag(encode_header(FORGED_ENVELOPE, ATTACKER)),),
            (FORGED,),
            trust=trust,
            **BAD_SIGNATURE,
        ),
        Case(
            f"tampered_signed_envelope_{trust}",
            (bag(tampered),),
            (FORGED,),
            trust=trust,
            **BAD_SIGNATURE,
        ),
        Case(
            f"made_up_signature_{trust}", (bag(made_up),), (FORGED,), trust=trust, **BAD_SIGNATURE
        ),
        Case(
            f"old_format_signature_{trust}",
            (bag(old_format),),
            (FORGED,),
            trust=trust,
            **BAD_SIGNATURE,
        ),
        Case(
            f"validly_signed_{trust}", (bag(encode_header(GOOD, KEYS)),), trace=TRACE, trust=trust
        ),
        Case(
            f"validly_signed_with_whitespace_{trust}",  # W3C allows OWS around '='
            (bag(encode_header(GOOD, KEYS).replace("sig=", "sig = ")),),
            trace=TRACE,
            trust=trust,
        ),
    ]


CASES = [
    # -- size limits --
    Case(
        "oversized_baggage", (bag(GOOD_HEADER + ",junk=" + "J" * 9000),), ("J" * 64,), **OVERSIZED
    ),
    Case(
        "oversized_baggage_with_traceparent",
        (bag(GOOD_HEADER + ",junk=" + "J" * 9000), h("traceparent", TRACEPARENT)),
        ("J" * 64,),
        trace=PARENT,
        **OVERSIZED,
    ),
    Case(
        "baggage_one_byte_over_8192",
        (bag(GOOD_HEADER + ",pad=" + "P" * (8193 - len(GOOD_HEADER) - 5)),),
        ("P" * 64,),
        **OVERSIZED,
    ),
    Case(
        "entry_over_4096",
        (bag(without("owner_team") + ",ownership.owner_team=" + "Q" * 5000),),
        ("Q" * 64,),
        missing=("owner_team",),
        invalid=((None, "oversized"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "ten_thousand_entries",
        (bag(",".join(f"k{i}=v{i}" for i in range(10_000)) + "," + GOOD_HEADER),),
        ("k9999=v9999",),
        **OVERSIZED,
    ),
    Case(
        "ten_thousand_ownership_entries",
        (bag(",".join(f"ownership.x.k{i}={FORGED}" for i in range(10_000))),),
        (FORGED,),
        **OVERSIZED,
    ),
    Case(
        "ours_past_the_180th_entry",
        (bag("a=1," * 200 + GOOD_HEADER),),
        missing=REQUIRED,
        invalid=((None, "too_many_entries"),),
        kept={},
    ),
    # -- duplicates --
    Case(
        "two_baggage_headers",
        (bag(GOOD_HEADER), bag(f"ownership.owner_team={FORGED}")),
        (FORGED,),
        missing=("owner_team",),
        invalid=(("owner_team", "duplicate"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "two_baggage_headers_one_foreign", (bag("sentry-env=prod"), bag(GOOD_HEADER)), trace=TRACE
    ),
    Case(
        "two_owner_team_headers",
        (h("x-owner-team", "search"), h("x-owner-team", FORGED), *EDGE_GOOD),
        (FORGED,),
        missing=("owner_team",),
        invalid=(("owner_team", "invalid"),),
        kept=kept("owner_team"),
    ),
    Case(
        "duplicated_entry",
        (bag(f"{GOOD_HEADER},ownership.owner_team={FORGED}"),),
        (FORGED,),
        missing=("owner_team",),
        invalid=(("owner_team", "duplicate"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "duplicated_entry_with_whitespace",
        (bag(f"{GOOD_HEADER} , ownership.owner_team = {FORGED} ;p=1"),),
        (FORGED,),
        missing=("owner_team",),
        invalid=(("owner_team", "duplicate"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "duplicated_trace_id_with_whitespace",
        (bag(f"{GOOD_HEADER},ownership.trace_id ={PARENT}"),),
        invalid=(("trace_id", "duplicate"),),
    ),
    # -- control characters, bytes, encodings --
    Case(
        "crlf_in_baggage_value",
        (bag(without("owner_team") + f",ownership.owner_team=zz\r\nSet-Cookie: {PWN}"),),
        (PWN,),
        missing=("owner_team",),
        invalid=(("owner_team", "malformed"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "nul_in_baggage_value",
        (bag(without("owner_team") + f",ownership.owner_team=a\0{PWN}"),),
        (PWN,),
        missing=("owner_team",),
        invalid=(("owner_team", "malformed"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "percent_encoded_crlf",
        (bag(without("owner_team") + f",ownership.owner_team=zz%0D%0A{PWN}"),),
        (PWN,),
        missing=("owner_team",),
        invalid=(("owner_team", "invalid"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "crlf_and_nul_in_edge_header",
        (h("x-owner-team", f"zz\r\n\0{PWN}"), *EDGE_GOOD),
        (PWN,),
        missing=("owner_team",),
        invalid=(("owner_team", "invalid"),),
        kept=kept("owner_team"),
    ),
    Case(
        "invalid_utf8_bytes",
        (bag(without("owner_team").encode() + b",ownership.owner_team=zz\xff\xfe" + PWN.encode()),),
        (PWN, "zz\xff\xfe"),
        missing=("owner_team",),
        invalid=(("owner_team", "malformed"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "non_ascii_utf8",
        (bag(without("feature").encode() + ",ownership.feature=équipe-zzutf".encode()),),
        ("zzutf",),
        missing=("feature",),
        invalid=(("feature", "malformed"),),
        kept=kept("feature"),
        trace=TRACE,
    ),
    Case(
        "invalid_percent_escape",
        (bag(without("owner_team") + f",ownership.owner_team=%zz{PWN}"),),
        (PWN,),
        missing=("owner_team",),
        invalid=(("owner_team", "invalid"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    Case(
        "percent_encoded_invalid_utf8",
        (bag(without("owner_team") + f",ownership.owner_team=%C3%28{PWN}"),),
        (PWN,),
        missing=("owner_team",),
        invalid=(("owner_team", "malformed"),),
        kept=kept("owner_team"),
        trace=TRACE,
    ),
    # -- raw identifiers where only keyed hashes may go --
    Case(
        "raw_email_in_tenant_entry",
        (bag(f"{GOOD_HEADER},ownership.tenant={ALICE}"),),
        (ALICE,),
        invalid=(("tenant", "raw_identifier"),),
        trace=TRACE,
    ),
    Case(
        "percent_encoded_email_in_user_entry",
        (bag(f"{GOOD_HEADER},ownership.user=bob%40example.org"),),
        (BOB, "bob%40example.org"),
        invalid=(("user", "raw_identifier"),),
        trace=TRACE,
    ),
    Case(
        "raw_emails_in_edge_headers_are_hashed",
        (h("x-owner-team", "search"), *EDGE_GOOD, h("x-tenant-id", ALICE), h("x-user-id", BOB)),
        (ALICE, BOB),
        kept={
            **GOOD_FIELDS,
            "tenant": hash_identifier(ALICE, HASH_KEY),
            "user": hash_identifier(BOB, HASH_KEY),
        },
    ),
    Case(
        "overlong_raw_tenant_header",
        (*EDGE_GOOD, h("x-owner-team", "search"), h("x-tenant-id", "T" * 300)),
        ("T" * 64,),
        invalid=(("tenant", "invalid"),),
    ),
    # -- versions and trace ids --
    Case(
        "format_version_2",
        (bag(GOOD_HEADER.replace("ownership.v=1", "ownership.v=2")), h("traceparent", TRACEPARENT)),
        missing=REQUIRED,
        invalid=(("version", "unsupported_version"),),
        kept={},
        trace=PARENT,
    ),
    Case(
        "garbage_traceparent",
        (bag(without("trace_id")), h("traceparent", f"zz-{PWN}\r\n-01")),
        (PWN,),
    ),
    Case(
        "garbage_traceparent_with_envelope_trace_id",
        (bag(GOOD_HEADER), h("traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01")),
        trace=TRACE,
    ),
    # -- signatures --
    *_signature_cases("signed"),
    *_signature_cases("all"),
    Case(
        "unsigned_envelope_when_only_signed_are_trusted",
        (bag(encode_header(FORGED_ENVELOPE)), h("x-owner-team", FORGED)),
        (FORGED,),
        missing=REQUIRED,
        kept={},
        trust="signed",
    ),
    Case("unsigned_envelope_when_all_are_trusted", (bag(GOOD_HEADER),), trace=TRACE),
    # With signing keys configured, an unsigned envelope is not believed unless the policy
    # says so: anyone could name any team in one.
    Case(
        "unsigned_envelope_with_signing_keys",
        (bag(GOOD_HEADER),),
        missing=("owner_team", "workflow_id", "feature"),
        kept={},
        accept_unsigned=False,
    ),
]
MODES = ("enforce", "quarantine", "stamp")


def _sendable_by_httpx(case: Case) -> bool:
    return all(re.fullmatch(rb"[\x20-\x7e]*", value) for _, value in case.headers)


PARAMS = [
    pytest.param(case, mode, transport, id=f"{case.id}-{mode}-{transport}")
    for case in CASES
    for mode in MODES
    for transport in ("raw", "raw+events", "httpx")
    if transport != "httpx" or _sendable_by_httpx(case)
]


# -- the app ----------------------------------------------------------------------------------


@dataclasses.dataclass
class App:
    asgi: Any
    seen: list[Envelope | None]


def make_app(mode: str, trust: str, accept_unsigned: bool = True) -> App:
    seen: list[Envelope | None] = []

    async def chat(request: Request) -> JSONResponse:
        seen.append(current())
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/v1/chat", chat, methods=["GET"])])
    policy = Policy(
        mode=mode,  # type: ignore[arg-type]
        trust=trust,  # type: ignore[arg-type]
        defaults=DEFAULTS if mode == "stamp" else {},
        edge_headers=EdgeHeaders(tenant="x-tenant-id", user="x-user-id"),
        accept_unsigned=accept_unsigned,
    )
    app.add_middleware(OwnershipMiddleware, policy=policy, keys=KEYS)
    return App(app, seen)


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def call_raw(app: Any, headers: tuple[tuple[bytes, bytes], ...]) -> Response:
    """One GET as an ASGI server hands it over: header bytes exactly as received."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/chat",
        "raw_path": b"/v1/chat",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    requested = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return Response(start["status"], headers, body)


async def call_httpx(app: Any, headers: tuple[tuple[bytes, bytes], ...]) -> Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/v1/chat", headers=list(headers))
    return Response(response.status_code, dict(response.headers), response.content)


# -- the test ---------------------------------------------------------------------------------


def _no_hostile_value(where: str, text: str, hostile: tuple[str, ...]) -> None:
    for value in hostile:
        assert value not in text, f"{where} echoes a hostile value"


@pytest.mark.parametrize(("case", "mode", "transport"), PARAMS)
def test_hostile_input_gets_the_policy_outcome(
    case: Case,
    mode: str,
    transport: str,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = request.getfixturevalue("event_sink") if transport == "raw+events" else None
    app = make_app(mode, case.trust, case.accept_unsigned)
    call = call_httpx if transport == "httpx" else call_raw

    response = asyncio.run(call(app.asgi, case.headers))

    trace_id = response.headers["x-trace-id"]
    assert TRACE_ID.fullmatch(trace_id) and trace_id != "0" * 32
    if case.trace is not None:
        assert trace_id == case.trace
    else:  # minted: neither the envelope's nor the traceparent's trace id
        assert trace_id not in (TRACE, PARENT)

    if mode == "enforce" and case.flawed:
        assert response.status == 400
        assert response.headers["content-type"] == "application/problem+json"
        document = json.loads(response.body)
        assert document["status"] == 400 and document["trace_id"] == trace_id
        assert document["missing"] == list(case.missing)
        assert [(p["field"], p["code"]) for p in document["invalid"]] == list(case.invalid)
        for name in (*case.missing, *(f for f, _ in case.invalid if f)):
            assert name in document["detail"]
        assert app.seen == []
    else:
        assert response.status == 200, response.body
        assert json.loads(response.body) == {"ok": True}
        [envelope] = app.seen
        assert envelope is not None and envelope.trace_id == trace_id
        fields = {name: getattr(envelope, name) for name in OWNERSHIP}
        expected: dict[str, str | None] = dict.fromkeys(OWNERSHIP)
        expected.update(case.kept)
        if mode == "stamp":
            expected.update({name: DEFAULTS[name] for name in case.missing})
            # Stamping fills gaps; it does not excuse invalid input.
            attribution = (
                "quarantined" if case.invalid else "stamped" if case.missing else "attributed"
            )
        else:
            attribution = "quarantined" if case.flawed else "attributed"
        assert fields == expected
        assert envelope.attribution == attribution
        assert envelope.extras == ()
        Envelope(**envelope.as_kwargs())  # every rule holds
        for name in ("tenant", "user"):
            value = getattr(envelope, name)
            assert value is None or re.fullmatch(r"h1:[0-9a-f]{32}", value)
        _no_hostile_value("the handler's envelope", repr(envelope), case.hostile)

    body = response.body.decode("latin-1")
    _no_hostile_value("the response", body, case.hostile)
    _no_hostile_value(
        "the response", json.dumps(json.loads(body), ensure_ascii=False), case.hostile
    )
    for record in caplog.records:
        _no_hostile_value("a log record", record.getMessage(), case.hostile)
        _no_hostile_value("a log record", repr(vars(record)), case.hostile)
    _no_hostile_value("the log", caplog.text, case.hostile)
    if sink is not None:
        assert sink.events, "the unit emitted no event"
        for event in sink.events:
            assert event["trace_id"] == trace_id
            _no_hostile_value("an event", json.dumps(event, default=str), case.hostile)
    if case.invalid or (case.flawed and mode != "stamp"):  # stamping a gap is routine
        assert any(r.name == "ownership_ctx" for r in caplog.records), "the reason is not logged"


def test_every_case_has_an_exact_outcome() -> None:
    """The table itself: ids unique, every hostile case names its hostile values or flaws."""
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        assert (
            case.flawed
            or case.hostile
            or case.id.startswith(
                (
                    "two_baggage_headers_one_foreign",
                    "validly_signed",
                    "unsigned_envelope_when_all",
                    "garbage_traceparent_with",
                )
            )
        ), case.id

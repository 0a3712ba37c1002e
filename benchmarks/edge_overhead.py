"""Per-request overhead of the edge middleware, side by side with what people use today.

Every case wraps the same bare app and gets the same requests (a W3C ``traceparent`` unique to
each request, and for ownership_ctx the ownership baggage of a full envelope), called directly
as ASGI / WSGI callables so that no server noise hides microseconds. Rounds are interleaved and
the fastest round is kept (other load on the machine only ever adds time); "added" is a case's
time minus the bare app's in the same run.

    python benchmarks/edge_overhead.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from ownership_ctx import Envelope, Keys, Policy, new_trace_id
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.codec import encode_header
from ownership_ctx.hashing import hash_identifier
from ownership_ctx.wsgi import OwnershipWSGIMiddleware

KEY = b"benchmark-hash-key-0123456789"


async def bare_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def bare_wsgi(environ: Any, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def full_envelope_baggage(with_trace_id: bool) -> str:
    envelope = Envelope(
        trace_id=new_trace_id(),
        owner_team="search-platform",
        workflow_id="ticket-triage-v2",
        feature="summarize",
        tenant=hash_identifier("acme-corp", KEY),
        user=hash_identifier("user-42", KEY),
    )
    text = encode_header(envelope)
    if not with_trace_id:
        text = ",".join(m for m in text.split(",") if not m.startswith("ownership.trace_id="))
    return text + ",sentry-environment=production"


def traceparent() -> bytes:
    return f"00-{new_trace_id()}-00f067aa0ba902b7-01".encode()


def asgi_cases() -> dict[str, Callable[..., Any]]:
    from asgi_correlation_id import CorrelationIdMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider

    policy = Policy(mode="enforce", required=("owner_team", "workflow_id", "feature", "tenant"))
    return {
        "bare app": bare_asgi,
        "ownership_ctx": OwnershipMiddleware(bare_asgi, policy=policy, keys=Keys()),
        "asgi-correlation-id": CorrelationIdMiddleware(bare_asgi),
        # An SDK provider with no span processor: the cheapest way OpenTelemetry can run.
        "opentelemetry-asgi": OpenTelemetryMiddleware(bare_asgi, tracer_provider=TracerProvider()),
    }


async def time_asgi(app: Callable[..., Any], scopes: list[dict[str, Any]]) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    start = time.perf_counter()
    for scope in scopes:
        await app(dict(scope), receive, send)
    return (time.perf_counter() - start) / len(scopes) * 1e6


def make_scopes(n: int, unique_baggage: bool) -> list[dict[str, Any]]:
    fixed = full_envelope_baggage(with_trace_id=False).encode()
    scopes = []
    for _ in range(n):
        baggage = full_envelope_baggage(True).encode() if unique_baggage else fixed
        headers = [
            (b"host", b"api.example.com"),
            (b"user-agent", b"bench/1.0"),
            (b"accept", b"*/*"),
            (b"traceparent", traceparent()),
            (b"baggage", baggage),
        ]
        scopes.append(
            {
                "type": "http",
                "method": "GET",
                "path": "/v1/summarize",
                "raw_path": b"/v1/summarize",
                "query_string": b"",
                "headers": headers,
                "scheme": "http",
                "http_version": "1.1",
                "server": ("127.0.0.1", 8000),
                "client": ("127.0.0.1", 5000),
                "root_path": "",
                "asgi": {"version": "3.0"},
            }
        )
    return scopes


def run_asgi(rounds: int, n: int) -> dict[str, float]:
    cases = asgi_cases()
    edge = make_scopes(n, unique_baggage=False)
    hop = make_scopes(n, unique_baggage=True)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    samples["ownership_ctx (unique baggage per request)"] = []

    async def go() -> None:
        for _ in range(rounds):
            for name, app in cases.items():
                samples[name].append(await time_asgi(app, edge))
            samples["ownership_ctx (unique baggage per request)"].append(
                await time_asgi(cases["ownership_ctx"], hop)
            )

    asyncio.run(go())
    return {name: min(values) for name, values in samples.items()}


def run_wsgi(rounds: int, n: int) -> dict[str, float]:
    baggage = full_envelope_baggage(with_trace_id=False)
    environs = [
        {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/v1/summarize",
            "HTTP_HOST": "api.example.com",
            "HTTP_TRACEPARENT": traceparent().decode(),
            "HTTP_BAGGAGE": baggage,
        }
        for _ in range(n)
    ]
    policy = Policy(mode="enforce", required=("owner_team", "workflow_id", "feature", "tenant"))
    cases = {
        "bare app": bare_wsgi,
        "ownership_ctx": OwnershipWSGIMiddleware(bare_wsgi, policy=policy, keys=Keys()),
    }

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, app in cases.items():
            start = time.perf_counter()
            for environ in environs:
                result = app(dict(environ), start_response)
                for _chunk in result:
                    pass
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            samples[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: min(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    rounds, n = (5, 2_000) if args.quick else (15, 10_000)

    results: list[dict[str, Any]] = []
    asgi = run_asgi(rounds, n)
    bare = asgi["bare app"]
    ours = asgi["ownership_ctx"] - bare
    print(f"ASGI: per request, fastest of {rounds} interleaved rounds of {n} requests")
    print(f"{'case':<46}{'µs/request':>12}{'added µs':>10}{'ours / this':>13}")
    for name, value in asgi.items():
        added = value - bare
        ratio = (
            f"{ours / added:.3f}"
            if name not in ("bare app",) and not name.startswith("ownership_ctx")
            else ""
        )
        print(f"{name:<46}{value:>12.2f}{added:>10.2f}{ratio:>13}")
        results.append(
            {
                "case": f"asgi/{name}",
                "metric": "time_per_request",
                "value": round(value, 3),
                "unit": "us",
            }
        )
        if name != "bare app":
            results.append(
                {
                    "case": f"asgi/{name}",
                    "metric": "added_per_request",
                    "value": round(added, 3),
                    "unit": "us",
                }
            )
        if ratio:
            results.append(
                {
                    "case": f"asgi/ownership_ctx vs {name}",
                    "metric": "added_ratio",
                    "value": float(ratio),
                    "unit": "ratio",
                }
            )
    print("goal: ours / asgi-correlation-id <= 0.5, ours / opentelemetry-asgi < 0.033\n")

    wsgi = run_wsgi(rounds, n)
    wbare = wsgi["bare app"]
    print("WSGI")
    print(f"{'case':<46}{'µs/request':>12}{'added µs':>10}{'ratio to bare':>13}")
    for name, value in wsgi.items():
        print(f"{name:<46}{value:>12.2f}{value - wbare:>10.2f}{value / wbare:>13.2f}")
        results.append(
            {
                "case": f"wsgi/{name}",
                "metric": "time_per_request",
                "value": round(value, 3),
                "unit": "us",
            }
        )
    results.append(
        {
            "case": "wsgi/ownership_ctx",
            "metric": "added_per_request",
            "value": round(wsgi["ownership_ctx"] - wbare, 3),
            "unit": "us",
        }
    )

    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

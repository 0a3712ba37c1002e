"""What carrying ownership across services costs, next to the call it rides on.

- Outbound: an httpx request through `OwnershipTransport` (envelope bound, signed and unsigned)
  versus the same request through the bare transport, both to an in-process transport so the
  network does not hide the difference; and versus a real request to a loopback server.
- Spans: starting and ending a span with `OwnershipSpanProcessor` versus without it.

    python benchmarks/propagation_overhead.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import TracerProvider

from ownership_ctx import Envelope, Keys, bind
from ownership_ctx.http import OwnershipTransport
from ownership_ctx.otel import OwnershipSpanProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENVELOPE = Envelope(
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    owner_team="search-platform",
    workflow_id="ticket-triage-v2",
    feature="summarize",
    tenant="h1:" + "a" * 32,
)
SIGNING = Keys(signing_keys=(b"benchmark-signing-key-01",))


def per_call(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def measure(cases: dict[str, Callable[[], Any]], rounds: int, n: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(per_call(fn, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def outbound_cases() -> dict[str, Callable[[], Any]]:
    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    bare = httpx.Client(transport=httpx.MockTransport(ok))
    ours = httpx.Client(
        transport=OwnershipTransport(
            httpx.MockTransport(ok), allow_hosts=["svc.internal"], keys=Keys()
        )
    )
    signed = httpx.Client(
        transport=OwnershipTransport(
            httpx.MockTransport(ok), allow_hosts=["svc.internal"], keys=SIGNING
        )
    )
    url = "http://svc.internal/v1/route"
    return {
        "bare httpx call": lambda: bare.get(url),
        "with OwnershipTransport": lambda: ours.get(url),
        "with OwnershipTransport, signed": lambda: signed.get(url),
    }


def span_cases() -> dict[str, Callable[[], Any]]:
    plain = TracerProvider().get_tracer("bench")
    annotated_provider = TracerProvider()
    annotated_provider.add_span_processor(OwnershipSpanProcessor())
    annotated = annotated_provider.get_tracer("bench")
    return {
        "span without processor": lambda: plain.start_span("llm").end(),
        "span with OwnershipSpanProcessor": lambda: annotated.start_span("llm").end(),
    }


def loopback_case(n: int) -> float | None:
    try:
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from tests.support.servers import uvicorn_server
    except ImportError:
        return None

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    with uvicorn_server(Starlette(routes=[Route("/", ok)])) as url, httpx.Client() as client:
        client.get(url)
        return per_call(lambda: client.get(url), n)


def table(title: str, results: dict[str, float], base: str, unit: str) -> list[dict[str, Any]]:
    print(title)
    print(f"{'case':<40}{unit:>14}{'added µs':>10}{'ratio':>8}")
    rows = []
    for name, value in results.items():
        added = value - results[base]
        print(f"{name:<40}{value:>14.2f}{added:>10.2f}{value / results[base]:>8.3f}")
        rows.append(
            {"case": name, "metric": "time_per_call", "value": round(value, 3), "unit": "us"}
        )
        if name != base:
            rows.append(
                {"case": name, "metric": "added_per_call", "value": round(added, 3), "unit": "us"}
            )
            rows.append(
                {
                    "case": name,
                    "metric": "ratio_to_base",
                    "value": round(value / results[base], 4),
                    "unit": "ratio",
                }
            )
    print()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    rounds, n = (3, 1_000) if args.quick else (9, 5_000)

    results: list[dict[str, Any]] = []
    with bind(ENVELOPE):
        outbound = measure(outbound_cases(), rounds, n)
        spans = measure(span_cases(), rounds, n * 4)
        loopback = loopback_case(max(n // 10, 100))
    results += table(
        "Outbound HTTP, per request (in-process transport)",
        outbound,
        "bare httpx call",
        "µs/request",
    )
    if loopback is not None:
        added = outbound["with OwnershipTransport"] - outbound["bare httpx call"]
        print(
            f"a real loopback httpx call costs {loopback:.1f} µs: injection adds "
            f"{added / loopback * 100:.2f}% to it\n"
        )
        results.append(
            {
                "case": "bare httpx call to loopback uvicorn",
                "metric": "time_per_call",
                "value": round(loopback, 3),
                "unit": "us",
            }
        )
        results.append(
            {
                "case": "injection share of a loopback call",
                "metric": "ratio",
                "value": round(added / loopback, 5),
                "unit": "ratio",
            }
        )
    results += table(
        "Spans, per span started and ended (envelope bound)",
        spans,
        "span without processor",
        "µs/span",
    )

    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

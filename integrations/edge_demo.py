"""The edge in one screen: requests through the middleware, with and without envelopes.

Runs a Starlette app in-process (no server, no broker) behind `OwnershipMiddleware` with one
policy of three modes, sends it the kinds of requests a gateway sees, and prints what each
handler observed and the log lines it wrote. `make demo` runs this.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ownership_ctx import EdgeHeaders, Keys, Policy, Rule, current, encode_header, new_trace_id
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.envelope import Envelope
from ownership_ctx.logs import OwnershipLogFilter, add_ownership

# Demo keys only: real deployments set OWNERSHIP_CTX_HASH_KEY / OWNERSHIP_CTX_SIGNING_KEYS.
KEYS = Keys(hash_key=b"demo-hash-key-not-secret", signing_keys=(b"demo-signing-key-not-secret",))

POLICY = Policy(
    mode="enforce",
    required=("owner_team", "workflow_id", "feature"),
    rules=(
        Rule("/internal/*", mode="quarantine"),
        Rule(
            "/batch/*",
            mode="stamp",
            defaults={
                "owner_team": "data-platform",
                "workflow_id": "nightly-batch",
                "feature": "reindex",
            },
        ),
    ),
    edge_headers=EdgeHeaders(tenant="x-tenant-id", user="x-user-id"),
)

log = structlog.get_logger("app")


async def handler(request: Request) -> JSONResponse:
    log.info("calling the model", route=request.url.path)
    envelope = current()
    return JSONResponse(envelope.as_dict() if envelope else None)


def build_app() -> Starlette:
    app = Starlette(routes=[Route("/{path:path}", handler, methods=["GET", "POST"])])
    app.add_middleware(OwnershipMiddleware, policy=POLICY, keys=KEYS)
    return app


def configure_logs(stream: object) -> None:
    structlog.configure(
        processors=[
            add_ownership,
            structlog.processors.KeyValueRenderer(
                key_order=["event", "owner_team", "workflow_id", "feature", "attribution"],
                drop_missing=True,
            ),
            lambda _logger, _name, line: "  log  " + line,
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),  # type: ignore[arg-type]
    )
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.addFilter(OwnershipLogFilter())
    handler.setFormatter(logging.Formatter("  log  %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("ownership_ctx").addHandler(handler)
    logging.getLogger("ownership_ctx").setLevel(logging.INFO)


def upstream_baggage() -> str:
    """What an internal service that also runs ownership_ctx sends: a signed envelope."""
    envelope = Envelope(
        trace_id=new_trace_id(),
        owner_team="support",
        workflow_id="ticket-triage",
        feature="summarize",
        tenant=KEYS.hash("acme-corp"),
    )
    return encode_header(envelope, KEYS) + ",sentry-environment=production"


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    (
        "first-party headers, raw tenant hashed at the edge",
        "/v1/summarize",
        {
            "x-owner-team": "support",
            "x-workflow-id": "ticket-triage",
            "x-feature": "summarize",
            "x-tenant-id": "acme-corp",
            "x-user-id": "jane@acme.example",
        },
    ),
    ("signed baggage from an internal service", "/v1/summarize", {"baggage": upstream_baggage()}),
    (
        "missing feature -> enforce",
        "/v1/summarize",
        {"x-owner-team": "support", "x-workflow-id": "ticket-triage"},
    ),
    (
        "raw email in the hashed tenant field -> enforce",
        "/v1/summarize",
        {
            "baggage": "ownership.owner_team=support,ownership.workflow_id=w,ownership.feature=f,"
            "ownership.tenant=jane@acme.example"
        },
    ),
    ("no ownership on an internal route -> quarantine", "/internal/report", {}),
    ("no ownership on a batch route -> stamp", "/batch/reindex", {}),
]


async def run(out: object) -> list[dict[str, object]]:
    results = []
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for title, path, headers in REQUESTS:
            print(f"\n> {title}\n  GET {path}", file=out)  # type: ignore[call-overload]
            response = await client.get(path, headers=headers)
            body = response.json()
            results.append({"title": title, "status": response.status_code, "body": body})
            print(
                f"  status {response.status_code}, x-trace-id {response.headers['x-trace-id']}",
                file=out,
            )  # type: ignore[call-overload]
            if response.status_code == 200:
                print(f"  handler saw: {json.dumps(body)}", file=out)  # type: ignore[call-overload]
            else:
                print(f"  problem: {body['detail']}", file=out)  # type: ignore[call-overload]
    return results


def main() -> int:
    out = sys.stdout
    configure_logs(out)
    print(
        "ownership_ctx edge demo: one policy (enforce by default, quarantine on /internal/*,"
        " stamp on /batch/*)",
        file=out,
    )
    asyncio.run(run(out))
    print(
        "\nRaw tenant and user ids never left the edge; rejected values were never echoed.",
        file=out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

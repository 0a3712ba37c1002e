"""The FastAPI + Celery + Redis reference integration, end to end with real processes.

A client calls the gateway (uvicorn); the gateway calls the router (uvicorn, trusts signed
envelopes only) with httpx; the router publishes a Celery task on real Redis; a real worker
runs it and calls the (fake) provider through the official OpenAI client. Asserted: what each
hop saw, the worker's log lines, the stored events, and, with OpenTelemetry on, every span.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from ownership_ctx import Envelope, encode_header, new_trace_id
from ownership_ctx.sinks import open_store
from ownership_ctx.testing.fake_providers import FakeProviders
from tests.integrations.support import (
    free_port,
    healthy,
    json_lines,
    processes,
    python,
    show_logs,
    wait_until,
)

CALLER = {"x-owner-team": "support", "x-workflow-id": "ticket-triage", "x-feature": "summarize"}
OWNER = {"owner_team": "support", "workflow_id": "ticket-triage", "feature": "summarize"}


@pytest.fixture(params=[False, True], ids=["plain", "with-opentelemetry"])
def chain(request: Any, redis_url: str, tmp_path: Path) -> Any:
    otel = request.param
    gateway_port, router_port = free_port(), free_port()
    queue = f"chain-{uuid.uuid4().hex[:8]}"
    paths = {"db": tmp_path / "events.db", "log": tmp_path / "worker.jsonl"}
    paths["spans"] = tmp_path / "spans.jsonl"
    with FakeProviders() as fake:
        env = {
            "OWNERSHIP_CTX_SIGNING_KEYS": "integration-test-signing-key",
            "OWNERSHIP_CTX_SINK_URL": f"sqlite:///{paths['db']}?interval=0.05",
            "OPENAI_BASE_URL": fake.openai_url,
            "ROUTER_URL": f"http://127.0.0.1:{router_port}",
            "CHAIN_BROKER_URL": f"{redis_url}/3",
            "CHAIN_QUEUE": queue,
            "CHAIN_LOG": str(paths["log"]),
            **({"CHAIN_SPANS": str(paths["spans"])} if otel else {}),
        }
        module = "integrations.fastapi_celery.app"
        commands = [
            python("-m", "uvicorn", f"{module}:router", "--port", str(router_port)),
            python("-m", "uvicorn", f"{module}:gateway", "--port", str(gateway_port)),
            python("-m", "celery", "-A", f"{module}:celery_app", "worker", "-P", "threads",
                   "-c", "2", "-Q", queue, "--without-heartbeat", "--without-gossip",
                   "--without-mingle", "-l", "info"),
        ]  # fmt: skip
        logs = tmp_path / "logs"
        logs.mkdir()
        gateway = f"http://127.0.0.1:{gateway_port}"
        with processes(commands, env, logs) as running:
            try:
                wait_until(lambda: healthy(gateway + "/health"), what="gateway")
                wait_until(lambda: healthy(env["ROUTER_URL"] + "/health"), what="router")
                yield {"gateway": gateway, "router": env["ROUTER_URL"], "otel": otel, **paths}
            except BaseException:
                print(show_logs(logs))
                raise
        # The processes have exited (SIGTERM): their sinks flushed at shutdown.
        assert all(p.returncode is not None for p in running)


def worker_lines(chain: dict[str, Any], trace_id: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(chain["log"]) if line.get("trace_id") == trace_id]


def test_ownership_and_trace_id_cross_every_hop(chain: dict[str, Any]) -> None:
    trace_id = new_trace_id()
    headers = {**CALLER, "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    response = httpx.post(f"{chain['gateway']}/tickets/T-1/summarize", headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["x-trace-id"] == trace_id
    # The router's handler saw the gateway's envelope (signed, so believed).
    assert response.json()["router"]["envelope"] == {
        "trace_id": trace_id,
        **OWNER,
        "attribution": "attributed",
    }

    # From outside, straight to the router: claims are not believed.
    claimed = Envelope(trace_id=new_trace_id(), owner_team="finance", workflow_id="w", feature="f")
    forged = httpx.post(
        f"{chain['router']}/route/T-2", headers={"baggage": encode_header(claimed)}, timeout=20
    ).json()["envelope"]
    assert forged["attribution"] == "quarantined" and "owner_team" not in forged

    # Log lines of all three processes (one file) carry the envelope: the gateway's httpx
    # line, the router's, and the worker's own and structlog lines.
    def calling(trace: str) -> list[dict[str, Any]]:
        lines = worker_lines(chain, trace)
        return lines if any(line["message"] == "calling the model" for line in lines) else []

    lines = wait_until(lambda: calling(trace_id), what="worker log lines")
    messages = {line["message"] for line in lines}
    assert {"calling the model", "routing ticket T-1"} <= messages
    assert any("summarizing ticket" in m for m in messages)
    for line in lines:
        assert {k: line.get(k) for k in OWNER} == OWNER, line
    forged_lines = wait_until(lambda: calling(forged["trace_id"]), what="forged task log")
    assert all(line.get("owner_team") is None for line in forged_lines)
    assert all(line.get("attribution") == "quarantined" for line in forged_lines)

    # Stored events: every hop and the provider call, joined by the trace id.
    def stored() -> list[dict[str, Any]]:
        store = open_store(f"sqlite:///{chain['db']}")
        try:
            return store.events_by_trace(trace_id)
        finally:
            store.close()

    events = wait_until(
        lambda: (found := stored()) and any(e["kind"] == "provider_call" for e in found) and found,
        what="stored provider call",
    )
    kinds = sorted((e["kind"], e.get("hop", ""), e.get("unit", e.get("route", ""))) for e in events)
    assert ("hop", "celery", "chain.summarize") in kinds
    assert ("hop", "http", "/route/T-1") in kinds
    assert ("hop", "http", "/tickets/T-1/summarize") in kinds
    call = next(e for e in events if e["kind"] == "provider_call")
    assert {k: call[k] for k in OWNER} == OWNER
    assert call["gen_ai.request.model"] == "gpt-4o-mini" and call["cost"] is not None
    assert call["attribution"] == "attributed"

    if chain["otel"]:
        spans = wait_until(
            lambda: [s for s in json_lines(chain["spans"]) if s["trace_id"] == trace_id],
            what="spans",
        )
        names = {span["name"] for span in spans}
        assert any("chain.summarize" in name for name in names), names  # Celery's spans
        assert any(name.startswith("POST") for name in names), names  # httpx and servers
        for span in spans:
            assert span["attributes"].get("ownership.owner_team") == "support", span["name"]

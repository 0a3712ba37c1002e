"""The Flask + Dramatiq + RabbitMQ reference integration, end to end with real processes.

Flask behind the WSGI middleware (served by `flask run`), a `dramatiq` worker process on real
RabbitMQ, the official Anthropic client against the fake provider. Asserted: what the view and
the actor saw, the worker's log lines, and the stored events.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from ownership_ctx import new_trace_id
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

CALLER = {"x-owner-team": "legal", "x-workflow-id": "contract-review", "x-feature": "classify"}
OWNER = {"owner_team": "legal", "workflow_id": "contract-review", "feature": "classify"}


@pytest.fixture
def docs(rabbitmq_url: str, tmp_path: Path) -> Any:
    port = free_port()
    # kombu spells the default vhost "//", pika "/%2F".
    broker_url = rabbitmq_url[:-2] + "/%2F" if rabbitmq_url.endswith("//") else rabbitmq_url
    queue = f"docs-{uuid.uuid4().hex[:8]}"
    paths = {"db": tmp_path / "events.db", "log": tmp_path / "docs.jsonl"}
    with FakeProviders() as fake:
        env = {
            "OWNERSHIP_CTX_SINK_URL": f"sqlite:///{paths['db']}?interval=0.05",
            "ANTHROPIC_BASE_URL": fake.url,
            "DOCS_BROKER_URL": broker_url,
            "DOCS_QUEUE": queue,
            "DOCS_LOG": str(paths["log"]),
        }
        module = "integrations.flask_dramatiq.app"
        commands = [
            python("-m", "flask", "--app", module, "run", "--port", str(port)),
            python("-m", "dramatiq", module, "--processes", "1", "--threads", "2",
                   "--queues", queue),
        ]  # fmt: skip
        logs = tmp_path / "logs"
        logs.mkdir()
        url = f"http://127.0.0.1:{port}"
        with processes(commands, env, logs):
            try:
                wait_until(lambda: healthy(url + "/health"), what="flask")
                yield {"url": url, "queue": queue, "broker": broker_url, **paths}
            except BaseException:
                print(show_logs(logs))
                raise


def stored(db: Path, trace_id: str) -> list[dict[str, Any]]:
    store = open_store(f"sqlite:///{db}")
    try:
        return store.events_by_trace(trace_id)
    finally:
        store.close()


def test_a_request_is_charged_to_its_owner_through_the_worker(docs: dict[str, Any]) -> None:
    trace_id = new_trace_id()
    headers = {**CALLER, "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    response = httpx.post(f"{docs['url']}/documents/D-1/classify", headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    assert response.json()["envelope"] == {
        "trace_id": trace_id,
        **OWNER,
        "attribution": "attributed",
    }

    refused = httpx.post(f"{docs['url']}/documents/D-2/classify", timeout=20)
    assert refused.status_code == 400
    assert refused.json()["missing"] == ["owner_team", "workflow_id", "feature"]

    def classified() -> list[dict[str, Any]]:
        lines = [line for line in json_lines(docs["log"]) if line.get("trace_id") == trace_id]
        return lines if any("classified D-1" in line["message"] for line in lines) else []

    lines = wait_until(classified, what="worker log lines")
    assert any(line["message"] == "classified D-1 for legal" for line in lines)
    for line in lines:
        assert {k: line.get(k) for k in OWNER} == OWNER, line

    events = wait_until(
        lambda: (
            (found := stored(docs["db"], trace_id))
            and any(e["kind"] == "provider_call" for e in found)
            and found
        ),
        what="stored provider call",
    )
    hops = {(e["hop"], e["unit"], e["outcome"]) for e in events if e["kind"] == "hop"}
    assert hops == {
        ("http", "/documents/D-1/classify", "attributed"),
        ("dramatiq", "classify", "attributed"),
    }
    (call,) = [e for e in events if e["kind"] == "provider_call"]
    assert {k: call[k] for k in OWNER} == OWNER
    assert call["gen_ai.provider.name"] == "anthropic" and call["cost"] is not None


def test_a_message_sent_without_our_middleware_is_stamped_from_configuration(
    docs: dict[str, Any],
) -> None:
    # A nightly importer: its own broker, no ownership middleware, no request behind it.
    importer = RabbitmqBroker(url=docs["broker"])
    try:
        message = dramatiq.Message(
            queue_name=docs["queue"], actor_name="reindex", args=("D-9",), kwargs={}, options={}
        )
        importer.declare_queue(docs["queue"])
        importer.enqueue(message)
    finally:
        importer.close()

    def reindexed() -> list[dict[str, Any]]:
        return [line for line in json_lines(docs["log"]) if line["message"] == "reindexing D-9"]

    (line,) = wait_until(reindexed, what="reindex log line")
    assert line["owner_team"] == "search" and line["attribution"] == "stamped"

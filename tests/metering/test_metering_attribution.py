"""Events carry the envelope bound where the call was made, and `unattributed` when none is."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ownership_ctx import Envelope, bind
from ownership_ctx.sinks import MemorySink

from .conftest import MESSAGES, calls, one_call

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVELOPE = Envelope(
    trace_id=TRACE,
    owner_team="search",
    workflow_id="ticket-triage",
    feature="summarize",
    tenant="h1:" + "a" * 32,
    user="h1:" + "b" * 32,
)


def test_inside_bind_block(openai_client: Any, sink: MemorySink) -> None:
    with bind(ENVELOPE):
        openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    event = one_call(sink)
    for field, value in ENVELOPE.as_dict().items():
        assert event[field] == value
    assert event["attribution"] == "attributed"


def test_unattributed_when_nothing_is_bound(openai_client: Any, sink: MemorySink) -> None:
    openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    event = one_call(sink)
    assert event["attribution"] == "unattributed"
    assert "owner_team" not in event and "trace_id" not in event


def test_stream_consumed_elsewhere_is_charged_to_the_caller(
    openai_client: Any, sink: MemorySink
) -> None:
    with bind(ENVELOPE):
        stream = openai_client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    with bind(None):  # read outside the block, in another thread
        worker = threading.Thread(target=lambda: [None for _ in stream])
        worker.start()
        worker.join()
    assert one_call(sink)["owner_team"] == "search"


def test_concurrent_calls_do_not_cross_talk(async_openai_client: Any, sink: MemorySink) -> None:
    async def call(team: str) -> None:
        with bind(ENVELOPE.replace(owner_team=team)):
            await async_openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    async def run() -> None:
        await asyncio.gather(*(call(f"team-{i}") for i in range(6)))

    asyncio.run(run())
    assert sorted(e["owner_team"] for e in calls(sink)) == [f"team-{i}" for i in range(6)]


def test_inside_an_asgi_request_handler(async_openai_client: Any, sink: MemorySink) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ownership_ctx.asgi import OwnershipMiddleware

    async def handler(request: Request) -> JSONResponse:
        reply = await async_openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        return JSONResponse({"text": reply.choices[0].message.content})

    app = Starlette(routes=[Route("/answer", handler, methods=["POST"])])
    app.add_middleware(OwnershipMiddleware)
    with TestClient(app) as client:
        response = client.post(
            "/answer",
            headers={"x-owner-team": "support", "x-workflow-id": "chat", "x-feature": "answer-bot"},
        )
    assert response.status_code == 200
    trace_id = response.headers["x-trace-id"]
    event = one_call(sink)
    assert (event["owner_team"], event["feature"]) == ("support", "answer-bot")
    assert event["trace_id"] == trace_id

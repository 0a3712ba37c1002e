"""The ASGI middleware under a real server (uvicorn on loopback): server errors carry the trace
id (issue 11, item 7), a mounted sub-app with its own middleware reuses the outer envelope
(item 8), and a configuration error fails the lifespan startup (issue 13)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from ownership_ctx import Policy, current, hash_identifier
from ownership_ctx.asgi import OwnershipMiddleware
from tests.support.servers import uvicorn_server
from tests.support.sinks import ListSink

OWNED = {"x-owner-team": "search", "x-workflow-id": "triage", "x-feature": "summarize"}
TRACE_ID = re.compile(r"[0-9a-f]{32}")


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("handler failed")


async def whoami(request: Request) -> JSONResponse:
    envelope = current()
    return JSONResponse({"trace_id": envelope.trace_id if envelope else None})


def _request_events(sink: ListSink) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5  # the server thread emits after the response is sent
    while not [e for e in sink.events if e["kind"] == "request"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return [e for e in sink.events if e["kind"] == "request"]


def _starlette_added(**options: Any) -> Starlette:
    app = Starlette(routes=[Route("/boom", boom), Route("/who", whoami)], **options)
    app.add_middleware(OwnershipMiddleware, policy=Policy(mode="quarantine"))
    return app


def _fastapi_added() -> FastAPI:
    app = FastAPI()

    @app.get("/boom")
    async def fastapi_boom() -> None:
        raise RuntimeError("handler failed")

    app.add_middleware(OwnershipMiddleware, policy=Policy(mode="quarantine"))
    return app


@pytest.mark.parametrize("make", [_starlette_added, _fastapi_added], ids=["starlette", "fastapi"])
def test_a_handler_that_raises_gets_a_500_with_the_trace_id(
    make: Any, event_sink: ListSink, capfd: pytest.CaptureFixture[str]
) -> None:
    with uvicorn_server(make()) as url:
        response = httpx.get(f"{url}/boom", headers=OWNED)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    [trace_id] = response.headers.get_list("x-trace-id")
    assert TRACE_ID.fullmatch(trace_id)
    [event] = _request_events(event_sink)
    assert (event["status"], event["trace_id"], event["route"]) == (500, trace_id, "/boom")
    # The exception still reaches the server, which logs it.
    logged = capfd.readouterr().err
    assert "Exception in ASGI application" in logged and "handler failed" in logged


def test_wrapping_the_app_keeps_its_own_500_handler(event_sink: ListSink) -> None:
    """The other supported setup: the middleware outside Starlette's error middleware."""

    async def on_error(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("custom error page", status_code=500)

    inner = Starlette(routes=[Route("/boom", boom)], exception_handlers={500: on_error})
    app = OwnershipMiddleware(inner, policy=Policy(mode="quarantine"))
    with uvicorn_server(app) as url:
        response = httpx.get(f"{url}/boom", headers=OWNED)
    assert (response.status_code, response.text) == (500, "custom error page")
    [trace_id] = response.headers.get_list("x-trace-id")
    [event] = _request_events(event_sink)
    assert (event["status"], event["trace_id"]) == (500, trace_id)


def test_a_mounted_sub_app_reuses_the_outer_envelope(event_sink: ListSink) -> None:
    sub = Starlette(routes=[Route("/who", whoami)])
    sub.add_middleware(OwnershipMiddleware, policy=Policy(mode="enforce"))  # would reject
    app = Starlette(routes=[Mount("/sub", app=sub)])
    app.add_middleware(OwnershipMiddleware, policy=Policy(mode="quarantine"))
    with uvicorn_server(app) as url:
        response = httpx.get(f"{url}/sub/who")
    assert response.status_code == 200
    [trace_id] = response.headers.get_list("x-trace-id")
    assert response.json() == {"trace_id": trace_id}  # the handler sees the outer one
    [hop] = [e for e in event_sink.events if e["kind"] == "hop"]
    [request] = _request_events(event_sink)
    assert hop["trace_id"] == request["trace_id"] == trace_id
    assert request["route"] == "/sub/who"


# --- configuration errors at startup -----------------------------------------------------------

APP_MODULE = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ownership_ctx import EdgeHeaders, Policy, current
    from ownership_ctx.asgi import OwnershipMiddleware


    async def who(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": current().tenant})


    app = Starlette(routes=[Route("/who", who)])
    # No keys=: they come from the environment.
    app.add_middleware(
        OwnershipMiddleware,
        policy=Policy(mode="quarantine", edge_headers=EdgeHeaders(tenant="x-tenant-id")),
    )
    """
)


def _uvicorn(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    (tmp_path / "edge_app.py").write_text(APP_MODULE)
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path)),
            *("--host", "127.0.0.1", "--port", "0", "edge_app:app"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OWNERSHIP_CTX_")}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    return {**env, **extra}


def test_a_configuration_error_stops_the_server_at_startup(tmp_path: Path) -> None:
    process = _uvicorn(tmp_path, _environment())
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode not in (0, None)
    [line] = [line for line in output.splitlines() if "ownership_ctx:" in line]
    assert "OWNERSHIP_CTX_HASH_KEY" in line
    assert "Traceback" not in output


def test_keys_come_from_the_environment_by_default(tmp_path: Path) -> None:
    key = "edge-hash-key-from-the-environment"
    process = _uvicorn(tmp_path, _environment(OWNERSHIP_CTX_HASH_KEY=key))
    try:
        assert process.stdout is not None
        url = None
        for line in process.stdout:
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, "uvicorn did not start"
        response = httpx.get(f"{url}/who", headers={"x-tenant-id": "acme"}, timeout=10)
        assert response.json() == {"tenant": hash_identifier("acme", key.encode())}
    finally:
        process.kill()
        process.wait(10)


def test_debug_mode_keeps_starlettes_traceback_page(event_sink: ListSink) -> None:
    from starlette.testclient import TestClient

    with TestClient(_starlette_added(debug=True), raise_server_exceptions=False) as client:
        response = client.get("/boom", headers=OWNED)
    assert response.status_code == 500 and "handler failed" in response.text
    [event] = _request_events(event_sink)
    assert event["status"] == 500

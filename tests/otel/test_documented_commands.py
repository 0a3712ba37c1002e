"""docs/opentelemetry.md, executed: its apps are written out as files and its shell commands run
verbatim (bash, in the order a reader types them), each service a real process.

Ports and the Redis database are chosen through settings the documented commands already read
(``UVICORN_PORT``, ``FLASK_RUN_PORT``, the apps' ``BROKER_URL`` / ``PAYMENTS_URL``), so the
commands themselves are not edited.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from ownership_ctx.sinks.config import DEFAULT_URL

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "opentelemetry.md").read_text()
BIN = str(Path(sys.executable).parent)
CALLER = {"x-owner-team": "search", "x-workflow-id": "checkout", "x-feature": "pay"}
#: The store the documented commands write to: the library's default, in the working directory.
STORE = DEFAULT_URL.removeprefix("sqlite:///")
WAIT = 90.0  # seconds a process may take to start or to write; not an assertion on speed

T = TypeVar("T")


def console_commands() -> list[str]:
    blocks = re.findall(r"^```console\n(.*?)^```", DOC, flags=re.M | re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def command(start: str, *fragments: str) -> str:
    """The one documented command that starts with ``start`` and contains ``fragments``."""
    found = [
        c for c in console_commands() if c.startswith(start) and all(f in c for f in fragments)
    ]
    assert len(found) == 1, (fragments, found)
    return found[0]


def python_file(name: str) -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC, flags=re.M | re.S)
    found = [b for b in blocks if b.startswith(f"# {name}")]
    assert len(found) == 1, name
    return found[0]


SETUP = [c for c in console_commands() if c.startswith("export OTEL_")]
ALLOW_HOSTS = command("export OWNERSHIP_CTX_ALLOW_HOSTS")


def test_allow_hosts_is_exported_before_the_services_start() -> None:
    # A reader types the commands in page order: an export after the start is never seen.
    commands = console_commands()
    start = command("opentelemetry-instrument uvicorn app:app")
    assert commands.index(ALLOW_HOSTS) < commands.index(start)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], process: Service | None = None) -> T:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if process is not None and process.proc.poll() is not None:
            pytest.fail(f"{what}: process exited\n{process.output()}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {WAIT:.0f} s\n{process.output() if process else ''}")


class Service:
    """One documented command, run by bash after the documented ``export`` lines."""

    def __init__(self, lines: list[str], cwd: Path, env: dict[str, str], name: str) -> None:
        self.log = cwd / f"{name}.log"
        self.name = name
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", "\n".join(["set -e", *lines])],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.output()


@pytest.fixture
def env() -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "OWNERSHIP_CTX_", "PYTHONPATH"))
    }
    return {**clean, "PATH": BIN + os.pathsep + clean.get("PATH", ""), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop(signal.SIGKILL)


def http_server(
    services: list[Service], lines: list[str], cwd: Path, env: dict[str, str], name: str
) -> tuple[Service, str]:
    port = free_port()
    env = {**env, "UVICORN_PORT": str(port), "FLASK_RUN_PORT": str(port)}
    service = Service(lines, cwd, env, name)
    services.append(service)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            httpx.get(url + "/", timeout=2)
        except httpx.TransportError:
            return False
        return True

    wait_for(f"{name} listening", answers, service)
    return service, url


def rows(path: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql, args)]
        except sqlite3.OperationalError:  # the tables are created by the first write
            return []


def answer(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted(
        # Flask lists allowed methods from a set: their order changes from process to process.
        (k, ", ".join(sorted(v.split(", "))) if k == "allow" else v)
        for k, v in response.headers.items()
        if k not in ("date", "server")
    )
    return response.status_code, response.content, headers


REQUESTS = [("GET", "/health"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/nope")]
REQUESTS += [("POST", "/checkout"), ("GET", "/health")]


def ask_all(url: str, headers: dict[str, str] | None = None) -> list[Any]:
    return [answer(httpx.request(m, url + p, headers=headers, timeout=30)) for m, p in REQUESTS]


def test_fastapi_app_with_no_ownership_code_answers_as_without_the_package(
    tmp_path: Path, env: dict[str, str], services: list[Service]
) -> None:
    plain_dir, instrumented_dir = tmp_path / "plain", tmp_path / "instrumented"
    for directory in (plain_dir, instrumented_dir):
        directory.mkdir()
        (directory / "app.py").write_text(python_file("app.py"))
    # PAYMENTS_URL: a port nothing listens on, so /checkout fails the same way in both.
    env = {**env, "PAYMENTS_URL": f"http://127.0.0.1:{free_port()}"}
    plain, plain_url = http_server(services, ["uvicorn app:app"], plain_dir, env, "plain")
    expected = ask_all(plain_url)
    plain_out = plain.stop()

    lines = [*SETUP, command("opentelemetry-instrument uvicorn app:app")]
    instrumented, url = http_server(services, lines, instrumented_dir, env, "instrumented")
    assert ask_all(url) == expected
    out = instrumented.stop()
    tracebacks = re.compile("^Traceback", flags=re.M)  # not the ones inside span JSON
    assert len(tracebacks.findall(out)) == len(tracebacks.findall(plain_out)), out  # /checkout's
    assert "ownership_ctx" not in out.split("Uvicorn running", 1)[0], out  # a clean start

    store = instrumented_dir / STORE
    hops = rows(store, "SELECT hop, unit, attribution FROM hops")
    requests = rows(store, "SELECT method, status FROM requests")
    served = len(REQUESTS) + 1  # and the readiness probe's GET /
    assert len(hops) == len(requests) == served
    assert {h["attribution"] for h in hops} == {"quarantined"}
    # /checkout raises: the middleware may record no status (the server answers 500 outside it).
    statuses = [500 if r["status"] is None else r["status"] for r in requests]
    assert sorted(statuses) == sorted([status for status, _, _ in expected] + [404])
    assert '"ownership.attribution": "quarantined"' in out  # spans carry ownership


def test_flask_app_with_no_ownership_code_answers_as_without_the_package(
    tmp_path: Path, env: dict[str, str], services: list[Service]
) -> None:
    plain_dir, instrumented_dir = tmp_path / "plain", tmp_path / "instrumented"
    for directory in (plain_dir, instrumented_dir):
        directory.mkdir()
        (directory / "payments.py").write_text(python_file("payments.py"))
    flask_run = command("opentelemetry-instrument flask")
    plain_run = flask_run.removeprefix("opentelemetry-instrument ")
    asks = [("GET", "/"), ("GET", "/charge"), ("PUT", "/charge"), ("GET", "/nope")]

    def ask(url: str) -> list[Any]:
        return [answer(httpx.request(m, url + p, timeout=30)) for m, p in asks]

    plain, plain_url = http_server(services, [plain_run], plain_dir, env, "plain")
    expected = ask(plain_url)
    plain.stop()
    instrumented, url = http_server(services, [*SETUP, flask_run], instrumented_dir, env, "flask")
    assert ask(url) == expected
    instrumented.stop()
    requests = rows(instrumented_dir / STORE, "SELECT status FROM requests")
    hops = rows(instrumented_dir / STORE, "SELECT outcome FROM hops")
    served = len(asks) + 1  # and the readiness probe's GET /
    assert len(requests) == len(hops) == served
    assert {h["outcome"] for h in hops} == {"quarantined"}


OWN_MIDDLEWARE = """
from ownership_ctx import Policy
from ownership_ctx.asgi import OwnershipMiddleware

app.add_middleware(OwnershipMiddleware, policy=Policy(mode="enforce"))
"""


def test_app_with_its_own_middleware_gets_one_set_of_events(
    tmp_path: Path, env: dict[str, str], services: list[Service]
) -> None:
    (tmp_path / "app.py").write_text(python_file("app.py") + OWN_MIDDLEWARE)
    lines = [*SETUP, command("opentelemetry-instrument uvicorn app:app")]
    server, url = http_server(services, lines, tmp_path, env, "own")
    assert httpx.get(url + "/health").status_code == 400  # the app's policy decides
    ok = httpx.get(url + "/health", headers=CALLER)
    assert ok.status_code == 200 and ok.headers["x-trace-id"]  # the app's own settings
    server.stop()
    hops = rows(tmp_path / STORE, "SELECT unit, outcome FROM hops")
    requests = rows(tmp_path / STORE, "SELECT status FROM requests")
    assert sorted(r["status"] for r in requests) == [200, 400, 400]  # with the probe's GET /
    assert sorted(h["outcome"] for h in hops) == ["attributed", "rejected", "rejected"]


def test_enforcement_is_opt_in_through_a_named_policy(
    tmp_path: Path, env: dict[str, str], services: list[Service]
) -> None:
    (tmp_path / "app.py").write_text(python_file("app.py"))
    (tmp_path / "policies.py").write_text(python_file("policies.py"))
    lines = [*SETUP, command("OWNERSHIP_CTX_POLICY=policies:POLICY", "uvicorn app:app")]
    server, url = http_server(services, lines, tmp_path, env, "enforce")
    for path in ("/health", "/docs", "/openapi.json"):
        assert httpx.get(url + path).status_code == 200, path
    refused = httpx.post(url + "/checkout")
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    server.stop()


def test_documented_disable_switch_turns_the_middleware_off(
    tmp_path: Path, env: dict[str, str], services: list[Service]
) -> None:
    (tmp_path / "app.py").write_text(python_file("app.py"))
    switch = command("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=ownership_ctx_asgi")
    server, url = http_server(services, [*SETUP, switch], tmp_path, env, "disabled")
    assert httpx.get(url + "/health").status_code == 200
    out = server.stop()
    assert rows(tmp_path / STORE, "SELECT unit FROM hops") == []
    assert '"ownership.' not in out  # nothing bound: no span carries ownership


PROBE = """
import json
from celery import Celery
from dramatiq.broker import Broker
from flask import Flask
from starlette.applications import Starlette
from ownership_ctx import events, hooks, metering

print(json.dumps({
    "ownership_ctx": hooks.installed.trace_id_source is not None,
    "ownership_ctx_metering": metering.instrumented_all(),
    "ownership_ctx_sink": events.get_sink() is not None,
    "ownership_ctx_asgi": hasattr(Starlette.build_middleware_stack, "__wrapped__"),
    "ownership_ctx_flask": hasattr(Flask.__call__, "__wrapped__"),
    "ownership_ctx_celery": Celery.__init__.__name__ == "init_with_ownership",
    "ownership_ctx_dramatiq": Broker.__init__.__name__ == "init_with_ownership",
}))
"""
PARTS = [
    "ownership_ctx",
    "ownership_ctx_metering",
    "ownership_ctx_sink",
    "ownership_ctx_asgi",
    "ownership_ctx_flask",
    "ownership_ctx_celery",
    "ownership_ctx_dramatiq",
]


@pytest.mark.parametrize("disabled", ["", *PARTS])
def test_each_part_has_its_own_switch(disabled: str, tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    switch = f"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS={disabled} " if disabled else ""
    script = "\n".join([*SETUP, switch + "opentelemetry-instrument python probe.py"])
    env = {**env, "OWNERSHIP_CTX_SINK_URL": "memory://"}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    enabled = json.loads(result.stdout.strip().splitlines()[-1])
    assert enabled == {part: part != disabled for part in PARTS}


@pytest.mark.brokers
def test_one_trace_across_fastapi_flask_celery_and_dramatiq(
    tmp_path: Path, env: dict[str, str], services: list[Service], redis_url: str
) -> None:
    for name in ("app.py", "payments.py", "tasks.py", "actors.py"):
        (tmp_path / name).write_text(python_file(name))
    # Spans are exported in batches; a short delay lets the test read them without stopping
    # the workers (a prefork child leaves with os._exit, before any exit hook could export).
    env = {**env, "BROKER_URL": f"{redis_url}/13", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    celery = Service(
        [*SETUP, command("opentelemetry-instrument celery -A tasks worker")],
        tmp_path,
        env,
        "celery",
    )
    services.append(celery)
    dramatiq = Service(
        [*SETUP, command("opentelemetry-instrument dramatiq actors")], tmp_path, env, "dramatiq"
    )
    services.append(dramatiq)
    flask, payments_url = http_server(
        services, [*SETUP, command("opentelemetry-instrument flask")], tmp_path, env, "flask"
    )
    lines = [*SETUP, ALLOW_HOSTS, command("opentelemetry-instrument uvicorn app:app")]
    env = {**env, "PAYMENTS_URL": payments_url}
    fastapi, url = http_server(services, lines, tmp_path, env, "fastapi")
    wait_for("celery worker ready", lambda: "ready." in celery.output(), celery)

    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    response = httpx.post(url + "/checkout", headers={**CALLER, "traceparent": traceparent})
    assert response.status_code == 200 and response.json() == {"payment": "charged"}

    def hops() -> list[dict[str, Any]] | None:
        found = rows(
            tmp_path / STORE,
            "SELECT hop, unit, owner_team, workflow_id, feature, attribution FROM hops"
            " WHERE trace_id = ?",
            trace_id,
        )
        return found if len(found) >= 4 else None

    seen = wait_for("a hop event from every service", hops, dramatiq)
    assert sorted((h["hop"], h["unit"]) for h in seen) == [
        ("celery", "tasks.receipt"),
        ("dramatiq", "send_receipt"),
        ("http", "/charge"),
        ("http", "/checkout"),
    ]
    for hop in seen:  # /charge got the envelope only as baggage: its caller sent no x- headers
        assert (hop["owner_team"], hop["workflow_id"], hop["feature"]) == tuple(CALLER.values())
        assert hop["attribution"] == "attributed"

    span = f'"trace_id": "0x{trace_id}"'
    for service in (fastapi, flask, celery):  # spans: the caller's trace id, and ownership
        exported = service.output
        wait_for(f"{service.name} exports its spans", lambda: span in exported(), service)  # noqa: B023
        assert '"ownership.owner_team": "search"' in service.output(), service.name

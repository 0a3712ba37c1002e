"""Log lines written while a message runs carry its envelope: the actor's own (stdlib and
structlog) and Dramatiq's, including the retry lines Dramatiq writes after the actor failed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ownership_ctx import bind
from tests.dramatiq.conftest import Deployment
from tests.dramatiq.support import envelope, unique

pytestmark = pytest.mark.brokers


def _lines(dep: Deployment, trace_id: str, want: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [r for r in dep.recorder.read(dep.log_key) if r.get("trace_id") == trace_id]
        if len(_expected(lines)) == want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _expected(lines: list[dict[str, Any]]) -> set[str]:
    found = set()
    for line in lines:
        message = line.get("message") or line.get("event", "")
        if line["source"] == "structlog" and message == "structlog line":
            found.add(f"structlog:{line['attempt']}")
        elif line.get("logger") == "tests.dramatiq.actor":
            found.add(f"stdlib:{message[-1]}")
        elif line.get("logger", "").startswith("dramatiq") and "Failed to process" in message:
            found.add("dramatiq:failed")
        elif line.get("logger", "").startswith("dramatiq") and "Retrying message" in message:
            found.add("dramatiq:retrying")
    return found


def test_log_lines_inside_actors_carry_the_envelope(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("logs")
    env = envelope(owner_team="logging-team")
    with bind(env):
        a.logs.send(rec, "t", "logged")
    deployment.recorder.wait(rec, 2)  # the failed first attempt and the retry
    lines = _lines(deployment, env.trace_id, want=6)
    assert _expected(lines) == {
        "stdlib:0",
        "stdlib:1",
        "structlog:0",
        "structlog:1",
        "dramatiq:failed",  # the worker's traceback line, before the after-hooks
        "dramatiq:retrying",  # Retries' line, from its after-hook: we reset after it
    }
    # Every line of this trace names this owner, and nothing else does.
    assert {line["owner_team"] for line in lines} == {"logging-team"}
    assert {line["attribution"] for line in lines} == {"attributed"}

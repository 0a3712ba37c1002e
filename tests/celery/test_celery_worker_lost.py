"""acks_late tasks whose pool process is killed mid-task keep their envelope when they run again.

``reject_on_worker_lost``: the broker redelivers the same message. ``retry_on_worker_lost``:
the worker's main process re-publishes the task, with no envelope bound there. Celery copies
the request's custom headers into the new message: the top-level ones, or, when the message
has a nested ``headers`` dict (Sentry and others write one), only that dict. The envelope
survives both ways because it is written at the top level and mirrored into the nested dict.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest

from ownership_ctx import bind
from tests.celery.support import make_envelope, new_wf, records, wait_records


@pytest.mark.brokers
@pytest.mark.parametrize(
    ("task", "headers"),
    [
        ("oc.q.requeued", None),
        ("oc.q.reposted", None),
        ("oc.q.reposted", {"headers": {"vendor-trace": "abc"}}),  # like Sentry's nested dict
    ],
    ids=["requeued", "reposted", "reposted-vendor-nested-headers"],
)
@pytest.mark.parametrize("config", ["redis-prefork", "rabbit-rpc-prefork"])
def test_killed_pool_process(
    worker_for: Any, config: str, task: str, headers: dict[str, Any] | None
) -> None:
    w = worker_for(config)
    wf, env = new_wf(task), make_envelope(f"lost-{config}-{task}")
    flag = f"oc:celery-tests:flag:{uuid.uuid4().hex}"
    with bind(env):
        w.app.tasks[task].apply_async(({"wf": wf, "label": "a", "flag": flag},), headers=headers)

    deadline = time.monotonic() + 30
    while not (first := records({wf})):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    os.kill(first[0]["pid"], signal.SIGKILL)  # the pool process our worker forked

    recs = wait_records({wf: 2})[wf]
    assert [r["first"] for r in recs] == [True, False]
    assert recs[0]["pid"] != recs[1]["pid"]
    assert [r["env"] for r in recs] == [env.as_dict(), env.as_dict()]
    if task == "oc.q.reposted":
        assert [r["try"] for r in recs] == [0, 1]  # a new message, published by the parent
    # What the worker's main process logged about the lost child names its task's owner.
    lost = [
        line
        for line in parent_lines(w, {r["pid"] for r in recs})
        if "WorkerLostError" in line["msg"] or "exited prematurely" in line["msg"]
    ]
    assert all(line["trace_id"] is not None for line in lost), lost
    assert any(line["trace_id"] == env.trace_id for line in lost), lost
    assert w.alive()


def parent_lines(w: Any, children: set[int]) -> list[dict[str, Any]]:
    """Stdlib log lines of the worker's main process (not of the pool processes ``children``)."""
    return [
        line
        for line in w.log_lines()
        if line.get("src") == "stdlib" and line.get("pid") not in children
    ]


@pytest.mark.brokers
def test_hard_time_limit_line_carries_the_envelope(worker_for: Any) -> None:
    w = worker_for("redis-prefork")
    wf, env = new_wf("hard-limit"), make_envelope("hard-limit")
    with bind(env):
        result = w.app.tasks["oc.q.hard_limited"].apply_async(({"wf": wf, "label": "a"},))
    child = wait_records({wf: 1})[wf][0]["pid"]
    deadline = time.monotonic() + 30
    while True:
        lines = [line for line in parent_lines(w, {child}) if result.id in line["msg"]]
        hard = [line for line in lines if line["msg"].startswith("Hard time limit")]
        if hard or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert hard, lines
    assert [(line["trace_id"], line["owner_team"]) for line in hard] == [
        (env.trace_id, env.owner_team)
    ]
    assert w.alive()

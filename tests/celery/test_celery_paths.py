"""Every publish / re-enqueue path of the issue, on every worker configuration.

For each configuration (broker x result backend x pool) all scenarios are published at once,
each under its own envelope, so they run concurrently on the same worker: an envelope that
leaks from one task into another shows up as a wrong envelope, a lost one as ``None``. The
worker records what `ownership_ctx.current()` returned in every execution; each test checks
one scenario's executions against the exact envelope it was published with.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import chain, chord, group
from celery.beat import ScheduleEntry, Scheduler

from ownership_ctx import Envelope, bind
from ownership_ctx.codec import QUEUE_HEADER, encode_header
from tests.celery import app as celery_app
from tests.celery.support import CONFIGS, Worker, make_envelope, new_wf, raw_publish, wait_records

PATH_CONFIGS = [
    "redis-prefork",
    "rabbit-threads",
    "rabbit-rpc-prefork",
    "redis-unlock-threads",
    "redis-rpc-solo",
]
Record = dict[str, Any]


@dataclasses.dataclass
class Expect:
    executions: list[tuple[str, int]]  # (label, attempt) of every execution
    envelope: dict[str, str] | None  # what every execution must have seen, exactly
    check: Callable[[list[Record], Any], None] | None = None  # extra checks
    handle: Any = None


def spec(wf: str, label: str, **more: Any) -> dict[str, Any]:
    return {"wf": wf, "label": label, **more}


def once(*labels: str) -> list[tuple[str, int]]:
    return [(label, 0) for label in labels]


def tasks(w: Worker) -> tuple[Any, Any, Any, Any]:
    t = w.app.tasks
    return t["oc.q.node"], t["oc.e.node"], t["oc.q.flaky"], t["oc.beat.report"]


# -- scenarios: publish, return what must happen ---------------------------------------------


def s_delay(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        node.delay(spec(wf, "a"))
    return Expect(once("a"), env.as_dict())


def s_custom_headers(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        node.apply_async((spec(wf, "a"),), headers={"custom_tag": wf})

    def check(recs: list[Record], _: Any) -> None:
        assert [r["custom"] for r in recs] == [wf]  # the caller's own header survives too

    return Expect(once("a"), env.as_dict(), check)


def s_countdown(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        node.apply_async((spec(wf, "a"),), countdown=0.4)
    return Expect(once("a"), env.as_dict())


def s_eta(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        node.apply_async((spec(wf, "a"),), eta=datetime.now(timezone.utc) + timedelta(seconds=0.4))
    return Expect(once("a"), env.as_dict())


def s_retry_manual(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        node.delay(spec(wf, "a", retries=2))
    return Expect([("a", 0), ("a", 1), ("a", 2)], env.as_dict())


def s_autoretry_backoff(w: Worker, wf: str, env: Envelope) -> Expect:
    flaky = tasks(w)[2]
    with bind(env):
        flaky.delay(spec(wf, "a", fails=2))
    return Expect([("a", 0), ("a", 1), ("a", 2)], env.as_dict())


def s_chain(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        chain(node.si(spec(wf, "a")), node.si(spec(wf, "b", retries=1)), node.si(spec(wf, "c")))()
    return Expect([("a", 0), ("b", 0), ("b", 1), ("c", 0)], env.as_dict())


def s_group(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        group(node.si(spec(wf, "a")), node.si(spec(wf, "b")), node.si(spec(wf, "c")))()
    return Expect(once("a", "b", "c"), env.as_dict())


def s_chord(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        chord([node.si(spec(wf, "a")), node.si(spec(wf, "b", retries=1))])(
            node.si(spec(wf, "body"))
        )
    return Expect([("a", 0), ("b", 0), ("b", 1), ("body", 0)], env.as_dict())


def s_chain_of_group(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        chain(
            node.si(spec(wf, "a")),
            group(node.si(spec(wf, "b")), node.si(spec(wf, "c"))),
            node.si(spec(wf, "d")),
        )()
    return Expect(once("a", "b", "c", "d"), env.as_dict())


def s_link_and_link_error(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    with bind(env):
        node.apply_async((spec(wf, "a"),), link=node.si(spec(wf, "on-success")))
        node.apply_async((spec(wf, "f", fail=True),), link_error=node.si(spec(wf, "on-error")))
    return Expect(once("a", "on-success", "f", "on-error"), env.as_dict())


def s_spawned(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    tree = spec(
        wf,
        "parent",
        spawn=[
            spec(wf, "child-later", countdown=0.3),
            spec(wf, "child", spawn=[spec(wf, "grandchild")]),
            spec(wf, "child-retried", retries=1),
        ],
    )
    with bind(env):
        node.delay(tree)
    return Expect(
        [
            *once("parent", "child-later", "child", "grandchild"),
            *[("child-retried", 0), ("child-retried", 1)],
        ],
        env.as_dict(),
    )


def s_send_task(w: Worker, wf: str, env: Envelope) -> Expect:
    with bind(env):
        w.app.send_task("oc.q.node", args=(spec(wf, "a"),))
    return Expect(once("a"), env.as_dict())


def s_enforced_attributed(w: Worker, wf: str, env: Envelope) -> Expect:
    enforced = tasks(w)[1]
    with bind(env):
        enforced.delay(spec(wf, "a"))
    return Expect(once("a"), env.as_dict())


def s_no_envelope(w: Worker, wf: str, env: Envelope) -> Expect:
    node = tasks(w)[0]
    node.delay(spec(wf, "a", spawn=[spec(wf, "child")]))  # nothing bound

    def check(recs: list[Record], _: Any) -> None:
        envs = [r["env"] for r in recs]
        # Marked unattributed at publish, run quarantined: no owner at all, and the child
        # inherits the parent's (ownerless) envelope, not anybody else's.
        assert all(set(e) == {"trace_id", "attribution"} for e in envs), envs
        assert all(e["attribution"] == "unattributed" for e in envs), envs
        assert len({e["trace_id"] for e in envs}) == 1, envs

    return Expect(once("a", "child"), None, check)


def s_enforce_refused(w: Worker, wf: str, env: Envelope) -> Expect:
    enforced = tasks(w)[1]
    result = enforced.delay(spec(wf, "a"))  # nothing bound: enforce refuses it

    def check(recs: list[Record], result: Any) -> None:
        assert recs == []  # the body never ran
        result.get(timeout=30, propagate=False)
        assert result.state == "FAILURE"
        assert type(result.result).__name__ == "TaskRefused"
        assert "owner_team: missing" in str(result.result)

    return Expect([], None, check, result)


def s_beat(w: Worker, wf: str, env: Envelope) -> Expect:
    # Beat's own publish code, with no request (and no envelope) behind it.
    scheduler = Scheduler(w.app, lazy=True)
    entry = ScheduleEntry(
        name="nightly", task="oc.beat.report", args=(spec(wf, "a"),), schedule=60, app=w.app
    )
    scheduler.apply_async(entry, advance=False)
    return Expect(once("a"), None, stamped_from_configuration)


def s_raw_publish_stamped(w: Worker, wf: str, env: Envelope) -> Expect:
    raw_publish(w.app, "oc.beat.report", (spec(wf, "a"),), {})  # no hooks, no header
    return Expect(once("a"), None, stamped_from_configuration)


def s_raw_publish_quarantined(w: Worker, wf: str, env: Envelope) -> Expect:
    raw_publish(w.app, "oc.q.node", (spec(wf, "a"),), {})

    def check(recs: list[Record], _: Any) -> None:
        assert [set(r["env"]) for r in recs] == [{"trace_id", "attribution"}]
        assert recs[0]["env"]["attribution"] == "quarantined"

    return Expect(once("a"), None, check)


def s_nested_header_only(w: Worker, wf: str, env: Envelope) -> Expect:
    # A path that kept only the nested headers dict (celery#4875): still the right owner.
    signed = _signed_header(w, env)
    raw_publish(w.app, "oc.q.node", (spec(wf, "a"),), {"headers": {QUEUE_HEADER: signed}})
    return Expect(once("a"), env.as_dict())


def _signed_header(w: Worker, env: Envelope) -> str:
    return encode_header(env, celery_app.KEYS)


def stamped_from_configuration(recs: list[Record], _: Any) -> None:
    [env] = [r["env"] for r in recs]
    assert env == {
        "trace_id": env["trace_id"],
        **celery_app.BEAT_DEFAULTS,
        "attribution": "stamped",
    }


SCENARIOS: dict[str, Callable[[Worker, str, Envelope], Expect]] = {
    "delay": s_delay,
    "apply_async_custom_headers": s_custom_headers,
    "countdown": s_countdown,
    "eta": s_eta,
    "retry_manual": s_retry_manual,
    "autoretry_for_backoff": s_autoretry_backoff,
    "chain": s_chain,
    "group": s_group,
    "chord": s_chord,
    "chain_with_group": s_chain_of_group,
    "link_and_link_error": s_link_and_link_error,
    "spawned_children": s_spawned,
    "send_task_by_name": s_send_task,
    "enforce_attributed": s_enforced_attributed,
    "no_envelope_unattributed": s_no_envelope,
    "enforce_refuses_no_envelope": s_enforce_refused,
    "beat_scheduled_publish": s_beat,
    "raw_kombu_publish_stamped": s_raw_publish_stamped,
    "raw_kombu_publish_quarantined": s_raw_publish_quarantined,
    "nested_header_only": s_nested_header_only,
}
NEEDS_CHORDS = {"chord", "chain_with_group"}


def run_all(w: Worker) -> dict[str, tuple[Expect, list[Record], str]]:
    """Publish every scenario at once, wait for all executions, keep them by scenario."""
    published: dict[str, tuple[Expect, str]] = {}
    for n, (name, scenario) in enumerate(SCENARIOS.items()):
        if name in NEEDS_CHORDS and not w.config.chords:
            continue
        wf = new_wf(name)
        published[name] = (scenario(w, wf, make_envelope(f"{w.config.name}-{n}")), wf)
    got = wait_records({wf: len(e.executions) for e, wf in published.values()})
    return {name: (e, got.get(wf, []), wf) for name, (e, wf) in published.items()}


def outcomes(w: Worker) -> dict[str, tuple[Expect, list[Record], str]]:
    if __name__ not in w.results:
        w.results[__name__] = run_all(w)
    return w.results[__name__]


@pytest.mark.brokers
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("config", PATH_CONFIGS)
def test_path_keeps_envelope(worker_for: Any, config: str, scenario: str) -> None:
    w = worker_for(config)
    if scenario in NEEDS_CHORDS and not CONFIGS[config].chords:
        pytest.skip("chords need a result backend the worker can read; rpc:// is the caller's")
    expect, recs, _ = outcomes(w)[scenario]
    got = collections.Counter((r["label"], r["try"]) for r in recs)
    assert got == collections.Counter(expect.executions), "lost or duplicated executions"
    if expect.envelope is not None:
        wrong = [(r["label"], r["try"], r["env"]) for r in recs if r["env"] != expect.envelope]
        assert wrong == [], f"expected {expect.envelope}"
    if expect.check is not None:
        expect.check(recs, expect.handle)
    assert w.alive()


@pytest.mark.brokers
@pytest.mark.parametrize("config", ["redis-prefork", "rabbit-threads", "redis-rpc-solo"])
def test_log_lines_carry_the_envelope(worker_for: Any, config: str) -> None:
    """Lines written inside tasks and Celery's own success / retry / failure lines."""
    w = worker_for(config)
    results = outcomes(w)
    lines = w.log_lines()

    def lines_about(task_id: str) -> list[dict[str, Any]]:
        return [x for x in lines if x["src"] == "stdlib" and task_id in x["msg"]]

    expect, recs, _ = results["autoretry_for_backoff"]
    [task_id] = {r["id"] for r in recs}
    retry_lines = [x for x in lines_about(task_id) if " retry: Retry in " in x["msg"]]
    assert len(retry_lines) == 2, lines_about(task_id)
    success = [x for x in lines_about(task_id) if "succeeded in" in x["msg"]]
    assert len(success) == 1
    for line in retry_lines + success:
        assert line["trace_id"] == expect.envelope["trace_id"], line
        assert line["owner_team"] == expect.envelope["owner_team"], line

    expect, recs, _ = results["link_and_link_error"]
    [failed] = [r for r in recs if r["label"] == "f"]
    failure = [x for x in lines_about(failed["id"]) if "raised unexpected" in x["msg"]]
    assert len(failure) == 1 and failure[0]["level"] == "ERROR", lines_about(failed["id"])
    assert failure[0]["trace_id"] == expect.envelope["trace_id"]
    assert failure[0]["owner_team"] == expect.envelope["owner_team"]

    expect, recs, _ = results["delay"]
    stdlib = [x for x in lines if x.get("msg") == "stdlib line in a" and x.get("trace_id")]
    struct = [
        x
        for x in lines
        if x["src"] == "structlog" and x.get("trace_id") == expect.envelope["trace_id"]
    ]
    assert any(x["trace_id"] == expect.envelope["trace_id"] for x in stdlib)
    assert struct and struct[0]["owner_team"] == expect.envelope["owner_team"]
    assert struct[0]["extra.cost_center"] == expect.envelope["extra.cost_center"]

    expect, _, _ = results["enforce_refuses_no_envelope"]
    task_id = expect.handle.id
    refused = [x for x in lines_about(task_id) if "refused, its body did not run" in x["msg"]]
    assert len(refused) == 1 and refused[0]["level"] == "ERROR"
    assert "owner_team: missing" in refused[0]["msg"]
    assert refused[0]["trace_id"] is None  # a refused task runs under no envelope

    # Nothing leaks out of a unit of work: the consumer's own lines (between tasks, in the
    # thread that ran them for solo) carry no envelope.
    received = [x for x in lines if x["src"] == "stdlib" and x["msg"].endswith("] received")]
    assert received and all(x["trace_id"] is None for x in received)

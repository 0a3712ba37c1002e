"""Property: random workflows on a real worker, zero lost and zero leaked envelopes.

Each example publishes a batch of workflows at once (nested canvases, retries, countdowns,
spawned children), each under its own random envelope or none, so they interleave on the
worker. Every execution must have seen exactly its workflow's envelope; a workflow published
with none must never see anybody's owner. ``OC_CELERY_PROPERTY_EXAMPLES`` sets the number of
examples per broker (default 6; e.g. 200 for a long run); ``OC_PROOF_WORKFLOWS`` keeps drawing
examples until that many workflows were checked per broker (``make proof``).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from celery import chain, chord, group
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from ownership_ctx import bind
from tests.celery.support import Worker, make_envelope, new_wf, records, wait_records
from tests.support import proof

EXAMPLES = int(os.environ.get("OC_CELERY_PROPERTY_EXAMPLES", "6"))
_labels = itertools.count()

# A node: (retries, countdown, children); children are spawned from inside the task.
nodes = st.recursive(
    st.tuples(
        st.sampled_from([0, 0, 0, 1, 2]), st.sampled_from([None, None, 0.1, 0.3]), st.just(())
    ),
    lambda inner: st.tuples(
        st.sampled_from([0, 0, 1]), st.sampled_from([None, 0.1]), st.lists(inner, max_size=2)
    ),
    max_leaves=4,
)
canvases = st.recursive(
    st.tuples(st.just("task"), nodes),
    lambda inner: st.one_of(
        st.tuples(st.just("chain"), st.lists(inner, min_size=2, max_size=3)),
        st.tuples(st.just("group"), st.lists(inner, min_size=1, max_size=3)),
        st.tuples(st.just("chord"), st.lists(inner, min_size=1, max_size=2), nodes),
    ),
    max_leaves=5,
)
workflows = st.lists(st.tuples(canvases, st.booleans()), min_size=1, max_size=4)


def build(w: Worker, wf: str, canvas: Any) -> tuple[Any, int]:
    """A Celery signature for ``canvas`` and the number of executions it will make."""
    node = w.app.tasks["oc.q.node"]

    def spec(tree: Any) -> tuple[dict[str, Any], int]:
        retries, countdown, children = tree
        built = [spec(c) for c in children]
        s = {
            "wf": wf,
            "label": f"n{next(_labels)}",
            "retries": retries,
            "retry_countdown": countdown or 0.05,
            "countdown": countdown,
            "spawn": [b for b, _ in built],
        }
        return s, 1 + retries + sum(n for _, n in built)

    kind = canvas[0]
    if kind == "task":
        s, n = spec(canvas[1])
        return node.si(s).set(countdown=s["countdown"]), n
    parts = [build(w, wf, c) for c in canvas[1]]
    count = sum(n for _, n in parts)
    if kind == "chain":
        return chain(*(p for p, _ in parts)), count
    if kind == "group":
        return group(*(p for p, _ in parts)), count
    body, n = spec(canvas[2])
    return chord([p for p, _ in parts], node.si(body)), count + n


def test_publishes(canvas: Any) -> int:
    """Messages the test process itself publishes for ``canvas``; workers publish the rest
    (retries, spawned children, chain links, chord bodies)."""
    kind = canvas[0]
    if kind == "task":
        return 1
    if kind == "chain":
        return test_publishes(canvas[1][0])
    return sum(test_publishes(c) for c in canvas[1])  # group members, chord header


test_publishes.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def run_workflows(w: Worker, batch: list[tuple[Any, bool]]) -> None:
    expected, envs = {}, {}
    for i, (canvas, with_envelope) in enumerate(batch):
        wf = new_wf("prop")
        signature, count = build(w, wf, canvas)
        env = make_envelope(f"prop-{i}-{wf}") if with_envelope else None
        with bind(env):
            signature.apply_async()
        expected[wf], envs[wf] = count, env
        note(f"{wf}: {canvas} envelope={with_envelope} executions={count}")
    try:
        got = wait_records(expected)
    except AssertionError:  # counted as lost below
        got = {}
        for r in records(set(expected)):
            got.setdefault(r["wf"], []).append(r)
    got = {wf: got.get(wf, []) for wf in expected}
    proof.record(
        "celery",
        w.config.name,
        workflows=len(batch),
        unowned=sum(not with_envelope for _, with_envelope in batch),
        executions=sum(len(recs) for recs in got.values()),
        worker_hops=sum(len(got[wf]) for wf in expected)
        - sum(test_publishes(canvas) for canvas, _ in batch),
        lost=sum(max(0, n - len(got[wf])) for wf, n in expected.items()),
        leaked=sum(
            r["env"] != env.as_dict()
            for wf, env in envs.items()
            if env is not None
            for r in got[wf]
        ),
    )
    traces = {env.trace_id for env in envs.values() if env is not None}
    for wf, env in envs.items():
        recs = got[wf]
        assert len(recs) == expected[wf], f"{wf}: lost or duplicated executions"
        for r in recs:
            if env is not None:
                assert r["env"] == env.as_dict(), f"{wf} {r['label']}: wrong envelope"
            else:  # never anybody's owner: only a (fresh) trace id, marked as lost upstream
                assert set(r["env"]) == {"trace_id", "attribution"}, r["env"]
                assert r["env"]["attribution"] == "unattributed"
                assert r["env"]["trace_id"] not in traces, "another workflow's trace id"


@pytest.mark.brokers
@pytest.mark.parametrize("config", ["redis-prefork", "rabbit-threads"])
def test_random_workflows_zero_lost_zero_leaked(worker_for: Any, config: str) -> None:
    w = worker_for(config)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking against a live worker
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(workflows)
    def check(batch: list[tuple[Any, bool]]) -> None:
        run_workflows(w, batch)

    check()
    # `make proof`: fresh random examples until this worker has checked its target.
    while proof.tally("celery", config).workflows < proof.target():
        check()
    assert w.alive()

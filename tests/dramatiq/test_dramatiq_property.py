"""Random workflows on real workers: every execution sees exactly its workflow's envelope.

Hypothesis generates sets of workflows (sends, delays, retries, pipelines with failing steps,
groups with completion callbacks, trees of nested enqueues), each with its own random envelope
or none, runs them concurrently on a Redis and a RabbitMQ worker, and checks: zero lost (every
execution happened and saw its envelope), zero leaked (nobody saw another workflow's).

``OWNERSHIP_CTX_DRAMATIQ_EXAMPLES`` sets the number of examples per broker (default 10; e.g.
200 for a long run); ``OC_PROOF_WORKFLOWS`` keeps drawing examples until that many workflows
were checked per broker (``make proof``, see docs/proof-at-scale.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from typing import Any

import dramatiq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ownership_ctx import Envelope, bind, new_trace_id
from tests.dramatiq.app import env_from
from tests.dramatiq.conftest import Deployment
from tests.dramatiq.support import unique
from tests.support import proof

pytestmark = pytest.mark.brokers
EXAMPLES = int(os.environ.get("OWNERSHIP_CTX_DRAMATIQ_EXAMPLES", "10"))

tokens = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._:/", min_size=1, max_size=12)
hashed = st.text("0123456789abcdef", min_size=32, max_size=32).map(lambda h: "h1:" + h)
fields = st.fixed_dictionaries(
    {},
    optional={
        "owner_team": tokens,
        "workflow_id": tokens,
        "feature": tokens,
        "tenant": hashed,
        "user": hashed,
        "extras": st.builds(lambda v: {"cost_center": v}, tokens),
    },
)
trees = st.recursive(
    st.just([]),
    lambda children: st.lists(
        st.fixed_dictionaries(
            {"delay": st.sampled_from([None, None, 50, 150]), "children": children}
        ),
        max_size=2,
    ),
    max_leaves=4,
)
shapes = st.one_of(
    st.tuples(st.just("send")),
    st.tuples(st.just("delay"), st.sampled_from([50, 150, 300])),
    st.tuples(st.just("retry"), st.integers(0, 2)),
    st.tuples(st.just("pipeline"), st.lists(st.integers(0, 1), min_size=2, max_size=4)),
    st.tuples(st.just("group"), st.lists(st.integers(0, 1), min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("tree"), trees),
)
workflows = st.lists(st.tuples(st.none() | fields, shapes), min_size=1, max_size=6)


def _count_tree(children: list[dict[str, Any]]) -> int:
    return sum(1 + _count_tree(child["children"]) for child in children)


def _start(dep: Deployment, rec: str, tag: str, shape: tuple[Any, ...]) -> int:
    """Send one workflow with whatever is bound now; return how many executions it makes."""
    a, kind = dep.actors, shape[0]
    if kind == "send":
        a.record.send(rec, tag, "n")
        return 1
    if kind == "delay":
        a.record.send_with_options(args=(rec, tag, "n"), delay=shape[1])
        return 1
    if kind == "retry":
        a.flaky.send(rec, tag, "n", shape[1])
        return shape[1] + 1
    if kind == "pipeline":
        steps = [
            a.step.message_with_options(args=(rec, tag, f"s{i}", fails), pipe_ignore=True)
            for i, fails in enumerate(shape[1])
        ]
        dramatiq.pipeline(steps, broker=dep.broker).run()
        return sum(fails + 1 for fails in shape[1])
    if kind == "group":
        members = [a.flaky.message(rec, tag, f"m{i}", fails) for i, fails in enumerate(shape[1])]
        group = dramatiq.group(members, broker=dep.broker)
        if shape[2]:
            group.add_completion_callback(a.record.message(rec, tag, "done"))
        group.run()
        return sum(fails + 1 for fails in shape[1]) + shape[2]
    a.tree.send(rec, tag, "root", shape[1])
    return 1 + _count_tree(shape[1])


def _expected(values: dict[str, Any], trace_id: str) -> Envelope:
    env = Envelope(trace_id=trace_id, **values)
    if env.missing(("owner_team", "workflow_id", "feature")):
        return env.replace(attribution="quarantined")  # the worker's policy marks it
    return env


def _test_publishes(shape: tuple[Any, ...]) -> int:
    """Messages the test process itself publishes for ``shape`` (the rest come from workers)."""
    return len(shape[1]) if shape[0] == "group" else 1


def run_workflows(
    deployment: Deployment, flows: list[tuple[dict[str, Any] | None, tuple[Any, ...]]]
) -> None:
    rec = unique("property")
    expected: dict[str, Envelope | None] = {}
    counts: Counter[str] = Counter()
    for i, (values, shape) in enumerate(flows):
        tag = f"w{i}"
        if values is None:
            expected[tag] = None
            counts[tag] = _start(deployment, rec, tag, shape)
        else:
            expected[tag] = _expected(values, new_trace_id())
            with bind(Envelope(trace_id=expected[tag].trace_id, **values)):  # type: ignore[union-attr]
                counts[tag] = _start(deployment, rec, tag, shape)
    with contextlib.suppress(AssertionError):  # what is missing is counted as lost below
        deployment.recorder.wait(rec, sum(counts.values()), timeout=30)
    time.sleep(0.2)  # anything extra (a duplicate, a stray) shows up too
    records = deployment.recorder.read(rec)
    got = Counter(r["tag"] for r in records)
    wrong = [
        r
        for r in records
        if expected[r["tag"]] is not None and env_from(r["env"]) != expected[r["tag"]]
    ]
    proof.record(
        "dramatiq",
        deployment.name,
        workflows=len(flows),
        unowned=sum(values is None for values, _ in flows),
        executions=len(records),
        worker_hops=len(records) - sum(_test_publishes(shape) for _, shape in flows),
        lost=sum((counts - got).values()),
        leaked=len(wrong),
    )

    assert got == counts  # zero lost, nothing extra
    enveloped = {e.trace_id for e in expected.values() if e is not None}
    traces_of_bare: dict[str, set[str]] = {}
    for record in records:
        tag, seen = record["tag"], env_from(record["env"])
        assert seen is not None, record  # every execution has an envelope bound
        if expected[tag] is not None:
            assert seen == expected[tag], (tag, flows[int(tag[1:])])
        else:
            # Published with nothing bound: unattributed, no owner, nobody else's trace.
            assert seen == Envelope(trace_id=seen.trace_id, attribution="unattributed"), record
            assert seen.trace_id not in enveloped
            traces_of_bare.setdefault(tag, set()).add(seen.trace_id)
    for tag, traces in traces_of_bare.items():
        shape = flows[int(tag[1:])][1]
        # One publish, one trace; only a group's members are published one by one.
        assert len(traces) <= _test_publishes(shape), (tag, shape, traces)
    all_bare = [t for traces in traces_of_bare.values() for t in traces]
    assert len(all_bare) == len(set(all_bare))  # no trace shared between two workflows


@pytest.mark.parametrize("deployment", ["redis-inproc", "rabbitmq-inproc"], indirect=True)
def test_random_workflows_zero_lost_zero_leaked(deployment: Deployment) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking against a live worker
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(flows=workflows)
    def check(flows: list[tuple[dict[str, Any] | None, tuple[Any, ...]]]) -> None:
        run_workflows(deployment, flows)

    check()
    # `make proof`: fresh random examples until this deployment has checked its target.
    while proof.tally("dramatiq", deployment.name).workflows < proof.target():
        check()

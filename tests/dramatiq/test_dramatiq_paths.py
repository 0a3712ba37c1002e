"""Every Dramatiq path that carries work from one unit to the next, on real brokers and workers.

Each test runs against Redis and RabbitMQ, with the worker in-process and as the ``dramatiq``
command (the ``deployment`` fixture), and asserts the exact envelope every execution saw.
"""

from __future__ import annotations

import time

import dramatiq
import pytest

from ownership_ctx import bind
from tests.dramatiq.app import STAMP_DEFAULTS
from tests.dramatiq.conftest import Deployment
from tests.dramatiq.support import bare, envelope, nodes, seen, unique

pytestmark = pytest.mark.brokers


def test_send_carries_the_envelope_and_none_is_unattributed(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("send")
    env = envelope(tenant="h1:" + "ab" * 16, user="h1:" + "cd" * 16)
    with bind(env):
        a.record.send(rec, "t", "with")
    a.record.send(rec, "t", "without")
    records = {r["node"]: r for r in deployment.recorder.wait(rec, 2)}
    assert seen([records["with"]]) == [env]
    without = seen([records["without"]])[0]
    assert without is not None
    # Nobody's envelope is reused: a fresh trace id, no ownership, marked unattributed.
    assert without == bare(without.trace_id, "unattributed")
    assert without.trace_id != env.trace_id


def test_delayed_messages_keep_their_envelope(deployment: Deployment) -> None:
    # The consumer re-enqueues a delayed message when it comes due, from its own thread with
    # nothing bound: the envelope written at send time must survive that.
    a, rec = deployment.actors, unique("delay")
    first, second = envelope(owner_team="team-a"), envelope(owner_team="team-b")
    with bind(first):
        a.record.send_with_options(args=(rec, "t", "first"), delay=300)
    with bind(second):
        a.record.send_with_options(args=(rec, "t", "second"), delay=100)
    a.record.send_with_options(args=(rec, "t", "none"), delay=200)
    records = {r["node"]: r for r in deployment.recorder.wait(rec, 3)}
    assert seen([records["first"]]) == [first]
    assert seen([records["second"]]) == [second]
    none = seen([records["none"]])[0]
    assert none is not None and none == bare(none.trace_id, "unattributed")


def test_retries_with_backoff_keep_the_envelope(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("retry")
    env = envelope()
    with bind(env):
        a.flaky.send(rec, "t", "max_retries", 2)  # fails twice, succeeds on the third run
        a.retry_when.send(rec, "t", "retry_when")  # retry_when allows two retries
    records = deployment.recorder.wait(rec, 6)
    assert nodes(records) == {("oc_flaky", "max_retries"): 3, ("oc_retry_when", "retry_when"): 3}
    assert sorted(r["attempt"] for r in records if r["node"] == "max_retries") == [0, 1, 2]
    assert seen(records) == [env] * 6


def test_pipeline_steps_frozen_at_build_time_carry_the_origin_envelope(
    deployment: Deployment,
) -> None:
    a, rec = deployment.actors, unique("pipeline")
    env = envelope()
    # Built with nothing bound: the later steps are frozen into the first message's options.
    pipe = dramatiq.pipeline(
        [
            a.step.message_with_options(args=(rec, "t", "s0", 0), pipe_ignore=True),
            a.step.message_with_options(args=(rec, "t", "s1", 1), pipe_ignore=True),  # retried
            a.step.message_with_options(args=(rec, "t", "s2", 0), pipe_ignore=True),
        ],
        broker=deployment.broker,
    )
    with bind(env):
        pipe.run()
    records = deployment.recorder.wait(rec, 4)
    assert nodes(records) == {("oc_step", "s0"): 1, ("oc_step", "s1"): 2, ("oc_step", "s2"): 1}
    assert seen(records) == [env] * 4


def test_pipeline_without_envelope_keeps_one_trace(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("pipeline-none")
    pipe = dramatiq.pipeline(
        [
            a.step.message_with_options(args=(rec, "t", f"s{i}", 0), pipe_ignore=True)
            for i in range(3)
        ],
        broker=deployment.broker,
    )
    pipe.run()
    records = deployment.recorder.wait(rec, 3)
    trace_id = records[0]["env"]["trace_id"]
    assert seen(records) == [bare(trace_id, "unattributed")] * 3


def test_group_with_completion_callback(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("group")
    env = envelope()
    group = dramatiq.group(
        [
            a.record.message(rec, "t", "m0"),
            a.flaky.message(rec, "t", "m1", 1),  # fails once, completes on retry
            a.record.message(rec, "t", "m2"),
        ],
        broker=deployment.broker,
    )
    group.add_completion_callback(a.record.message(rec, "t", "done"))
    with bind(env):
        group.run()
    records = deployment.recorder.wait(rec, 5)
    assert nodes(records) == {
        ("oc_record", "m0"): 1,
        ("oc_flaky", "m1"): 2,
        ("oc_record", "m2"): 1,
        ("oc_record", "done"): 1,
    }
    assert seen(records) == [env] * 5


def test_on_success_and_on_failure_callbacks(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("callbacks")
    ok, failing = envelope(owner_team="team-ok"), envelope(owner_team="team-fail")
    with bind(ok):
        a.ok_with_callback.send(rec, "t", "ok")
    with bind(failing):
        a.fail_with_callback.send(rec, "t", "fail")
    records = {(r["actor"], r["node"]): r for r in deployment.recorder.wait(rec, 4)}
    assert set(records) == {
        ("oc_ok_with_callback", "ok"),
        ("oc_on_success", "ok"),
        ("oc_fail_with_callback", "fail"),
        ("oc_on_failure", "fail:RuntimeError"),
    }
    for (_, node), record in records.items():
        assert seen([record]) == [ok if node == "ok" else failing]


def test_messages_enqueued_inside_an_actor_inherit_its_envelope(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("nested")
    env = envelope()
    children = [
        {"delay": None, "children": [{"delay": None, "children": []}]},
        {"delay": 150, "children": [{"delay": 50, "children": []}]},
    ]
    with bind(env):
        a.tree.send(rec, "t", "root", children)
    a.tree.send(rec, "u", "root", children)  # an unattributed parent: children share its trace
    records = deployment.recorder.wait(rec, 10)
    expected_nodes = {"root", "root.0", "root.0.0", "root.1", "root.1.0"}
    attributed = [r for r in records if r["tag"] == "t"]
    unattributed = [r for r in records if r["tag"] == "u"]
    assert {r["node"] for r in attributed} == expected_nodes == {r["node"] for r in unattributed}
    assert seen(attributed) == [env] * 5
    trace_id = unattributed[0]["env"]["trace_id"]
    assert trace_id != env.trace_id
    assert seen(unattributed) == [bare(trace_id, "unattributed")] * 5


def test_skip_message_raised_by_another_middleware(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("skip")
    env = envelope()
    with bind(env):
        a.skipped.send(rec, "t", "skipped")
    # The other middleware saw the envelope while skipping, and after the skip; the actor
    # never ran; then the worker threads run unattributed work without leftovers.
    records = deployment.recorder.wait(rec, 2)
    assert nodes(records) == {
        ("skip-middleware", "skipped"): 1,
        ("skip-middleware-after", "skipped"): 1,
    }
    assert seen(records) == [env] * 2
    _assert_no_leftover(deployment, env)


def test_time_limit_kill_keeps_envelope_for_failure_callback(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("time-limit")
    env = envelope()
    with bind(env):
        a.slow.send(rec, "t", "slow")
    records = deployment.recorder.wait(rec, 2, timeout=30)
    assert nodes(records) == {
        ("oc_slow", "slow"): 1,
        ("oc_on_failure", "slow:TimeLimitExceeded"): 1,
    }
    assert seen(records) == [env] * 2
    _assert_no_leftover(deployment, env)


def test_message_from_a_publisher_without_the_middleware(deployment: Deployment) -> None:
    plain, rec = deployment.plain, unique("plain")
    with bind(envelope()):  # bound on the publisher, but nothing writes it into the message
        plain.record.send(rec, "t", "quarantined")
        plain.stamped.send(rec, "t", "stamped")
        plain.tree.send(rec, "t", "tree", [{"delay": None, "children": []}])
        plain.strict.send(rec, "t", "rejected")
    records = {r["node"]: r for r in deployment.recorder.wait(rec, 4)}
    quarantined = seen([records["quarantined"]])[0]
    assert quarantined is not None
    assert quarantined == bare(quarantined.trace_id, "quarantined")
    stamped = seen([records["stamped"]])[0]
    assert stamped is not None
    assert stamped._asdict() == {
        **bare(stamped.trace_id, "stamped")._asdict(),
        **STAMP_DEFAULTS,
    }
    tree, child = seen([records["tree"], records["tree.0"]])
    assert tree is not None and tree == child == bare(tree.trace_id, "quarantined")
    assert len({quarantined.trace_id, stamped.trace_id, tree.trace_id}) == 3
    time.sleep(0.5)
    assert "rejected" not in {r["node"] for r in deployment.recorder.read(rec)}


def test_enforced_actor_skips_messages_without_ownership(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("enforce")
    env = envelope()
    a.strict.send(rec, "t", "none")
    with bind(env.replace(feature=None)):
        a.strict.send(rec, "t", "partial")
    with bind(env):
        a.strict.send(rec, "t", "full")
    records = deployment.recorder.wait(rec, 1)
    time.sleep(0.5)
    records = deployment.recorder.read(rec)
    assert nodes(records) == {("oc_strict", "full"): 1}
    assert seen(records) == [env]


def test_stamped_actor_fills_missing_owner_from_defaults(deployment: Deployment) -> None:
    a, rec = deployment.actors, unique("stamp")
    partial = envelope(workflow_id=None, feature=None)
    with bind(partial):
        a.stamped.send(rec, "t", "partial")
    full = envelope()
    with bind(full):
        a.stamped.send(rec, "t", "full")
    records = {r["node"]: r for r in deployment.recorder.wait(rec, 2)}
    assert seen([records["partial"]]) == [
        partial.replace(
            workflow_id=STAMP_DEFAULTS["workflow_id"],
            feature=STAMP_DEFAULTS["feature"],
            attribution="stamped",
        )
    ]
    assert seen([records["full"]]) == [full]


def test_one_message_object_sent_from_two_units(deployment: Deployment) -> None:
    # Some brokers enqueue the caller's own Message object: the second send must carry the
    # second unit's envelope, not the first one's.
    a, rec = deployment.actors, unique("same-object")
    message = a.record.message(rec, "t", "same")
    first, second = envelope(owner_team="first"), envelope(owner_team="second")
    with bind(first):
        deployment.broker.enqueue(message)
    with bind(second):
        deployment.broker.enqueue(message)
    records = deployment.recorder.wait(rec, 2)
    assert sorted(seen(records), key=lambda e: e.owner_team or "") == [first, second]  # type: ignore[union-attr]


def _assert_no_leftover(deployment: Deployment, previous: object) -> None:
    """Unattributed messages after a unit ended see nothing of it, on every worker thread."""
    a, rec = deployment.actors, unique("after")
    for i in range(6):
        a.record.send(rec, "t", f"after-{i}")
    for envelope_seen in seen(deployment.recorder.wait(rec, 6)):
        assert envelope_seen is not None and envelope_seen != previous
        assert envelope_seen == bare(envelope_seen.trace_id, "unattributed")

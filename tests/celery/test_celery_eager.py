"""task_always_eager: no message is published, so the task must see the caller's envelope.

In-memory transport only: these run without any broker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, group
from celery._state import _set_task_join_will_block

from ownership_ctx import Envelope, bind, current
from ownership_ctx.celery import install
from tests.celery import app as celery_app
from tests.celery.support import make_envelope


@pytest.fixture
def eager() -> Iterator[tuple[Celery, list[tuple[str, Envelope | None]]]]:
    app = Celery("oc-eager", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.task_always_eager = True
    seen: list[tuple[str, Envelope | None]] = []

    @app.task(name="oc.q.eager", bind=True, shared=False)
    def node(self: Any, label: str, children: tuple[str, ...] = ()) -> str:
        seen.append((label, current()))
        for child in children:
            node.delay(child)
        return label

    @app.task(name="oc.e.eager", shared=False)
    def enforced(label: str) -> str:
        seen.append((label, current()))
        return label

    hooks = install(app, policy=celery_app.POLICIES["main"], keys=celery_app.KEYS)
    try:
        yield app, seen
    finally:
        hooks.uninstall()
        # Eager apply_async toggles a process-wide "joins would block" flag without a lock;
        # concurrent eager calls from threads can leave it set (a Celery race, not ours).
        _set_task_join_will_block(False)


def test_eager_task_and_its_children_see_the_callers_envelope(eager: Any) -> None:
    app, seen = eager
    env = make_envelope("eager")
    with bind(env):
        app.tasks["oc.q.eager"].delay("parent", ("child",))
        chain(app.tasks["oc.q.eager"].si("c1"), app.tasks["oc.q.eager"].si("c2"))()
        group(app.tasks["oc.q.eager"].si("g1"), app.tasks["oc.q.eager"].si("g2"))()
        app.tasks["oc.e.eager"].apply(("enforced",))
        assert current() == env  # the caller's binding is intact afterwards
    assert seen == [
        (label, env) for label in ("parent", "child", "c1", "c2", "g1", "g2", "enforced")
    ]
    assert current() is None


def test_eager_without_envelope_follows_the_policy(eager: Any) -> None:
    app, seen = eager
    app.tasks["oc.q.eager"].delay("quarantined")
    [(_, env)] = seen
    assert env is not None and env.owner_team is None and env.attribution == "unattributed"

    result = app.tasks["oc.e.eager"].delay("refused")
    assert len(seen) == 1  # the body did not run
    assert result.state == "FAILURE"
    with pytest.raises(Exception, match="owner_team: missing") as info:
        result.get()
    assert type(info.value).__name__ == "TaskRefused"


def test_eager_in_threads_never_crosses(eager: Any) -> None:
    app, seen = eager
    envs = [make_envelope(f"thread-{i}") for i in range(4)]

    def run(env: Envelope) -> None:
        with bind(env):
            for _ in range(25):
                app.tasks["oc.q.eager"].delay(env.owner_team, ("child-" + env.owner_team,))

    threads = [threading.Thread(target=run, args=(env,)) for env in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_owner = {env.owner_team: env for env in envs}
    assert len(seen) == 4 * 25 * 2
    for label, env in seen:
        assert env == by_owner[label.removeprefix("child-")]

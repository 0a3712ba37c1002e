"""The embedded default (StubBroker, no services), placement in the middleware list, hop
records, signatures, and the lifecycle corners that need a hand-built broker."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Retries, SkipMessage

from ownership_ctx import Envelope, Keys, Policy, bind, current, encode_header
from ownership_ctx.codec import QUEUE_HEADER
from ownership_ctx.dramatiq import OwnershipMiddleware
from tests.dramatiq.conftest import Deployment
from tests.dramatiq.support import bare, envelope, nodes, seen, unique


def _names(broker: dramatiq.Broker) -> list[str]:
    return [type(m).__name__ for m in broker.middleware]


def _run(broker: StubBroker, *queues: str) -> None:
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        for queue in queues:
            broker.join(queue, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def test_stub_broker_paths(stub: Deployment) -> None:
    a, rec = stub.actors, unique("stub")
    env = envelope()
    pipe = dramatiq.pipeline(
        [
            a.step.message_with_options(args=(rec, "t", f"s{i}", i % 2), pipe_ignore=True)
            for i in range(3)
        ],
        broker=stub.broker,
    )
    group = dramatiq.group([a.record.message(rec, "t", "g0")], broker=stub.broker)
    group.add_completion_callback(a.record.message(rec, "t", "done"))
    with bind(env):
        a.record.send(rec, "t", "send")
        a.record.send_with_options(args=(rec, "t", "delayed"), delay=50)
        a.flaky.send(rec, "t", "retried", 1)
        a.tree.send(rec, "t", "tree", [{"delay": None, "children": []}])
        a.ok_with_callback.send(rec, "t", "cb")
        pipe.run()
        group.run()
    records = stub.recorder.wait(rec, 14)
    assert nodes(records) == {
        ("oc_record", "send"): 1,
        ("oc_record", "delayed"): 1,
        ("oc_flaky", "retried"): 2,
        ("oc_tree", "tree"): 1,
        ("oc_tree", "tree.0"): 1,
        ("oc_ok_with_callback", "cb"): 1,
        ("oc_on_success", "cb"): 1,
        ("oc_step", "s0"): 1,
        ("oc_step", "s1"): 2,
        ("oc_step", "s2"): 1,
        ("oc_record", "g0"): 1,
        ("oc_record", "done"): 1,
    }
    assert seen(records) == [env] * 14


@pytest.mark.parametrize("when", ["before-actors", "after-actors", "explicitly-last"])
def test_middleware_places_itself_first(when: str) -> None:
    broker = StubBroker()
    middleware = OwnershipMiddleware(policy=Policy(mode="quarantine"))

    def declare() -> None:
        dramatiq.actor(lambda: None, broker=broker, actor_name="noop")

    if when == "before-actors":
        broker.add_middleware(middleware)
        assert _names(broker)[-1] == "OwnershipMiddleware"  # until the first actor is declared
        declare()
    elif when == "after-actors":
        declare()
        broker.add_middleware(middleware)
    else:
        declare()
        broker.add_middleware(middleware, after=Retries)
    assert broker.middleware[0] is middleware
    assert _names(broker)[1:] == [
        "AgeLimit",
        "TimeLimit",
        "ShutdownNotifications",
        "Callbacks",
        "Pipelines",
        "Retries",
    ]


def test_enqueue_without_any_actor_declared_still_places_first() -> None:
    broker = StubBroker()
    broker.declare_queue("raw")
    broker.add_middleware(OwnershipMiddleware())
    assert broker.middleware[0] is not None
    env = envelope()
    with bind(env):
        broker.enqueue(dramatiq.Message("raw", "nobody", (), {}, {}))
    assert isinstance(broker.middleware[0], OwnershipMiddleware)
    sent = dramatiq.Message.decode(broker.queues["raw"].get_nowait())
    assert sent.options[QUEUE_HEADER] == encode_header(env)


def test_hop_records_and_enforced_skip(event_sink: object) -> None:
    broker = StubBroker()
    broker.add_middleware(OwnershipMiddleware(policy=Policy(mode="enforce")))
    ran: list[Envelope | None] = []

    @dramatiq.actor(broker=broker)
    def owned() -> None:
        ran.append(current())

    env = envelope()
    with bind(env):
        owned.send()
    owned.send()  # enforce: skipped and dead-lettered
    _run(broker, owned.queue_name)
    assert ran == [env]
    assert [m.actor_name for m in broker.dead_letters] == ["owned"]
    hops = [e for e in event_sink.events if e["kind"] == "hop"]  # type: ignore[attr-defined]
    assert [(h["hop"], h["unit"], h["outcome"]) for h in hops] == [
        ("dramatiq", "owned", "attributed"),
        ("dramatiq", "owned", "rejected"),
    ]
    assert hops[0]["owner_team"] == "search"
    assert hops[1]["missing"] == ["owner_team", "workflow_id", "feature"]
    assert current() is None


def test_workers_can_require_signatures() -> None:
    keys = Keys(signing_keys=(b"dramatiq-signing-key-for-tests-01",))
    worker_broker = StubBroker()
    worker_broker.add_middleware(OwnershipMiddleware(policy=Policy(trust="signed"), keys=keys))
    ran: list[tuple[str, Envelope | None]] = []

    @dramatiq.actor(broker=worker_broker)
    def signed_only(label: str) -> None:
        ran.append((label, current()))

    env = envelope()
    with bind(env):
        signed_only.send("signed")  # this broker's middleware signs
    unsigned = encode_header(envelope(owner_team="unsigned-team"))
    signed_only.send_with_options(args=("unsigned",), **{QUEUE_HEADER: unsigned})
    _run(worker_broker, signed_only.queue_name)
    assert ran == [("signed", env)]
    assert [m.args for m in worker_broker.dead_letters] == [("unsigned",)]


def test_queue_based_rules_through_the_unit_function() -> None:
    from ownership_ctx import Rule

    policy = Policy(
        mode="enforce",
        rules=(
            Rule(
                "batch/*",
                mode="stamp",
                defaults={"owner_team": "data", "workflow_id": "etl", "feature": "load"},
            ),
        ),
    )
    broker = StubBroker()
    broker.add_middleware(
        OwnershipMiddleware(policy=policy, unit=lambda m: f"{m.queue_name}/{m.actor_name}")
    )
    ran: list[Envelope | None] = []

    @dramatiq.actor(broker=broker, queue_name="batch")
    def load() -> None:
        ran.append(current())

    load.send()
    _run(broker, "batch")
    assert len(ran) == 1 and ran[0] is not None
    # Published with nothing bound, owned by configuration here: "stamped", as a beat task.
    assert (ran[0].owner_team, ran[0].workflow_id, ran[0].attribution) == (
        "data",
        "etl",
        "stamped",
    )


def test_skip_by_a_middleware_placed_before_ours_is_harmless() -> None:
    # Someone forces a skipping middleware in front of ours: our before-hook never runs for
    # that message, our after-hook must then do nothing (and nothing may stay bound).
    class SkipAll(dramatiq.Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: object) -> None:
            if getattr(message, "actor_name", "") == "skipped":
                raise SkipMessage("skip")

    broker = StubBroker()
    ours = OwnershipMiddleware(policy=Policy(mode="quarantine"))
    broker.add_middleware(ours)
    ran: list[Envelope | None] = []

    @dramatiq.actor(broker=broker)
    def skipped() -> None:
        ran.append(current())

    @dramatiq.actor(broker=broker)
    def after() -> None:
        ran.append(current())

    broker.middleware.insert(0, SkipAll())  # after our own placement ran
    with bind(envelope()):
        skipped.send()
    after.send()
    _run(broker, skipped.queue_name)
    assert len(ran) == 1 and ran[0] is not None
    assert ran[0] == bare(ran[0].trace_id, "unattributed")


def test_age_limit_skip_is_logged_with_the_envelope_and_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ownership_ctx.logs import OwnershipLogFilter

    broker = StubBroker()
    broker.add_middleware(OwnershipMiddleware(policy=Policy(mode="quarantine")))
    ran: list[Envelope | None] = []

    @dramatiq.actor(broker=broker, max_age=1)
    def old() -> None:
        ran.append(current())

    @dramatiq.actor(broker=broker)
    def fresh() -> None:
        ran.append(current())

    env = envelope()
    with bind(env):
        message = old.message()
    import time

    time.sleep(0.01)
    with bind(env):
        broker.enqueue(message)
    fresh.send()
    caplog.handler.addFilter(OwnershipLogFilter())
    caplog.set_level("DEBUG", logger="dramatiq")
    _run(broker, old.queue_name)
    assert len(ran) == 1 and ran[0] is not None and ran[0].owner_team is None
    skipped = [r for r in caplog.records if "was skipped" in r.getMessage()]
    assert [getattr(r, "trace_id", None) for r in skipped] == [env.trace_id]
    assert isinstance(broker.middleware[1], AgeLimit)


def test_async_actor_sees_the_envelope() -> None:
    from dramatiq.middleware import AsyncIO

    broker = StubBroker()
    broker.add_middleware(AsyncIO())
    broker.add_middleware(OwnershipMiddleware(policy=Policy(mode="quarantine")))
    ran: list[Envelope | None] = []

    @dramatiq.actor(broker=broker)
    async def coro() -> None:
        ran.append(current())

    env = envelope()
    with bind(env):
        coro.send()
    _run(broker, coro.queue_name)  # the worker starts and stops AsyncIO's event loop thread
    assert ran == [env]


def test_a_failed_enqueue_leaves_no_envelope_for_the_next_sender() -> None:
    class FlakyBroker(StubBroker):
        down = True

        def enqueue(
            self, message: dramatiq.Message, *, delay: int | None = None
        ) -> dramatiq.Message:  # type: ignore[type-arg]
            if self.down:
                self.down = False
                self.emit_before("enqueue", message, delay)
                raise ConnectionError("broker down")
            return super().enqueue(message, delay=delay)

    broker = FlakyBroker()
    broker.add_middleware(OwnershipMiddleware(policy=Policy(mode="quarantine")))
    ran: list[Envelope | None] = []

    @dramatiq.actor(broker=broker, queue_name="flaky")
    def work() -> None:
        ran.append(current())

    message = work.message()
    first, second = envelope(owner_team="first-unit"), envelope(owner_team="second-unit")
    with bind(first), pytest.raises(ConnectionError):
        broker.enqueue(message)
    with bind(second):
        broker.enqueue(message)  # the caller retries the same Message from another unit
    _run(broker, "flaky")
    assert ran == [second]

"""The actors the Dramatiq tests run, declared on any broker, in-process or in a `dramatiq` worker.

Every actor execution writes what it saw (`ownership_ctx.current()`) to a `Recorder` list named
by the test (``rec``), tagged with the test's workflow ``tag`` and a ``node`` label, so a test
can assert the exact envelope of every execution. Lists live in Redis (shared with a worker
subprocess) or in memory (StubBroker tests without any service).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import dramatiq
import structlog
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import CurrentMessage, GroupCallbacks, SkipMessage
from dramatiq.rate_limits import RateLimiterBackend

from ownership_ctx import Envelope, Keys, Policy, Rule, current, metering
from ownership_ctx.dramatiq import OwnershipMiddleware
from ownership_ctx.logs import OwnershipLogFilter, add_ownership

SIGNING_KEY = b"dramatiq-tests-signing-key-0001"
STAMP_DEFAULTS = {"owner_team": "platform", "workflow_id": "nightly-batch", "feature": "reindex"}
RETRY = {"min_backoff": 50, "max_backoff": 200}


def worker_policy() -> Policy:
    """The worker side of every deployment: quarantine by default, one enforced and one
    stamped actor."""
    return Policy(
        mode="quarantine",
        extra_keys=("cost_center",),
        rules=(
            Rule("oc_strict", mode="enforce"),
            Rule("oc_stamped", mode="stamp", defaults=STAMP_DEFAULTS),
        ),
    )


def keys() -> Keys:
    return Keys(signing_keys=(SIGNING_KEY,))


def env_json(envelope: Envelope | None) -> dict[str, Any] | None:
    return None if envelope is None else envelope._asdict()


def env_from(data: Mapping[str, Any] | None) -> Envelope | None:
    if data is None:
        return None
    values = dict(data)
    values["extras"] = [tuple(pair) for pair in values["extras"]]
    return Envelope(**values)


class Recorder:
    """Append-only lists of JSON records, in Redis (``url``) or in this process's memory."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._memory: defaultdict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()
        if url is not None:
            import redis

            self._redis: Any = redis.Redis.from_url(url)

    def push(self, key: str, record: Mapping[str, Any]) -> None:
        text = json.dumps(record)
        if self.url is None:
            with self._lock:
                self._memory[key].append(text)
        else:
            self._redis.rpush(key, text)

    def read(self, key: str) -> list[dict[str, Any]]:
        if self.url is None:
            with self._lock:
                texts: list[Any] = list(self._memory[key])
        else:
            texts = self._redis.lrange(key, 0, -1)
        return [json.loads(t) for t in texts]

    def wait(self, key: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The records of ``key`` once there are at least ``count`` (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.read(key)
            if len(records) >= count or time.monotonic() > deadline:
                assert len(records) >= count, f"{len(records)} of {count} records in {key}"
                return records
            time.sleep(0.02)

    def first(self, flag: str) -> bool:
        """True for the first caller with ``flag`` (across processes when in Redis)."""
        if self.url is None:
            with self._lock:
                if flag in self._memory:
                    return False
                self._memory[flag].append("1")
                return True
        return bool(self._redis.set(flag, "1", nx=True, ex=600))

    def delete(self, pattern: str) -> None:
        if self.url is None:
            with self._lock:
                self._memory.clear()
        else:
            keys = list(self._redis.scan_iter(pattern))
            if keys:
                self._redis.delete(*keys)


class LogToRecorder(logging.Handler):
    """Writes every stdlib record emitted while an envelope is bound to one recorder list."""

    def __init__(self, recorder: Recorder, key: str) -> None:
        super().__init__(logging.INFO)
        self.recorder, self.key = recorder, key
        self.addFilter(OwnershipLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return
        self.recorder.push(
            self.key,
            {
                "source": "logging",
                "logger": record.name,
                "message": record.getMessage(),
                "trace_id": trace_id,
                "owner_team": getattr(record, "owner_team", None),
                "attribution": getattr(record, "attribution", None),
            },
        )


def structlog_logger(recorder: Recorder, key: str) -> Any:
    """A structlog logger (not the global configuration) whose lines go to ``key``."""

    def to_recorder(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        recorder.push(key, {"source": "structlog", **{k: str(v) for k, v in event.items()}})
        raise structlog.DropEvent

    return structlog.wrap_logger(object(), processors=[add_ownership, to_recorder])


class SkipOnRequest(dramatiq.Middleware):
    """Another middleware that skips messages for ``oc_skipped``, recording what it saw."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if message.actor_name == "oc_skipped":
            rec, tag, node = message.args
            self.recorder.push(rec, _record(tag, "skip-middleware", node, 0))
            raise SkipMessage("skipped by SkipOnRequest")

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        if message.actor_name == "oc_skipped":
            rec, tag, node = message.args
            self.recorder.push(rec, _record(tag, "skip-middleware-after", node, 0))


def _attempt() -> int:
    message = CurrentMessage.get_current_message()
    return 0 if message is None else int(message.options.get("retries", 0))


def _record(tag: str, actor: str, node: str, attempt: int) -> dict[str, Any]:
    return {
        "tag": tag,
        "actor": actor,
        "node": node,
        "attempt": attempt,
        "env": env_json(current()),
        "thread": threading.get_ident(),
    }


@dataclass
class Actors:
    broker: Broker
    queue: str
    recorder: Recorder
    record: Any
    flaky: Any
    retry_when: Any
    tree: Any
    step: Any
    ok_with_callback: Any
    fail_with_callback: Any
    slow: Any
    logs: Any
    strict: Any
    stamped: Any
    skipped: Any
    hang_once: Any


def install(
    broker: Broker,
    *,
    recorder: Recorder,
    rate_limiter: RateLimiterBackend,
    ownership: bool = True,
    policy: Policy | None = None,
) -> None:
    """The middleware of a test deployment (``ownership=False``: a publisher without ours)."""
    if ownership:
        broker.add_middleware(OwnershipMiddleware(policy=policy or worker_policy(), keys=keys()))
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(GroupCallbacks(rate_limiter, barrier_ttl=120_000))  # keep Redis tidy
    broker.add_middleware(SkipOnRequest(recorder))


def declare(broker: Broker, queue: str, recorder: Recorder, log_key: str = "") -> Actors:
    """Declare every test actor on ``broker``, consuming from ``queue``."""

    def actor(**options: Any) -> Any:
        def decorate(fn: Any) -> Any:
            return dramatiq.actor(fn, broker=broker, queue_name=queue, **options)

        return decorate

    def record(rec: str, tag: str, actor_name: str, node: str) -> int:
        attempt = _attempt()
        recorder.push(rec, _record(tag, actor_name, node, attempt))
        return attempt

    @actor()
    def oc_record(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_record", node)

    @actor(max_retries=3, **RETRY)
    def oc_flaky(rec: str, tag: str, node: str, fails: int) -> None:
        if record(rec, tag, "oc_flaky", node) < fails:
            raise ValueError("flaky step failed on purpose")

    # Retried while retry_when says so (retries 0 and 1), then given up: three executions.
    @actor(retry_when=lambda retries, exc: isinstance(exc, KeyError) and retries < 2, **RETRY)
    def oc_retry_when(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_retry_when", node)
        raise KeyError("always")

    @actor()
    def oc_tree(rec: str, tag: str, node: str, children: list[dict[str, Any]]) -> None:
        """Record, then enqueue one child per spec ({"delay": ms | None, "children": [...]})."""
        record(rec, tag, "oc_tree", node)
        for i, child in enumerate(children):
            oc_tree.send_with_options(
                args=(rec, tag, f"{node}.{i}", child["children"]), delay=child.get("delay")
            )

    @actor(max_retries=3, **RETRY)
    def oc_step(rec: str, tag: str, node: str, fails: int) -> None:
        if record(rec, tag, "oc_step", node) < fails:
            raise ValueError("pipeline step failed on purpose")

    @actor()
    def oc_on_success(message: dict[str, Any], result: Any) -> None:
        rec, tag, node = message["args"][:3]
        record(rec, tag, "oc_on_success", node)

    @actor()
    def oc_on_failure(message: dict[str, Any], error: dict[str, str]) -> None:
        rec, tag, node = message["args"][:3]
        record(rec, tag, "oc_on_failure", node + ":" + error["type"])

    @actor(on_success="oc_on_success")
    def oc_ok_with_callback(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_ok_with_callback", node)

    @actor(on_failure="oc_on_failure", max_retries=0)
    def oc_fail_with_callback(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_fail_with_callback", node)
        raise RuntimeError("failed on purpose")

    @actor(time_limit=300, max_retries=0, on_failure="oc_on_failure")
    def oc_slow(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_slow", node)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # short sleeps: the time limit interrupts between
            time.sleep(0.01)
        record(rec, tag, "oc_slow-not-killed", node)

    stdlib_log = logging.getLogger("tests.dramatiq.actor")
    struct_log = structlog_logger(recorder, log_key)

    @actor(max_retries=1, **RETRY)
    def oc_logs(rec: str, tag: str, node: str) -> None:
        attempt = record(rec, tag, "oc_logs", node)
        stdlib_log.info("stdlib line from %s attempt %d", node, attempt)
        struct_log.info("structlog line", node=node, attempt=attempt)
        if attempt == 0:
            raise ValueError("first attempt fails so that Dramatiq logs a retry")

    @actor()
    def oc_strict(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_strict", node)

    @actor()
    def oc_stamped(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_stamped", node)

    @actor()
    def oc_skipped(rec: str, tag: str, node: str) -> None:
        record(rec, tag, "oc_skipped", node)  # never runs: SkipOnRequest skips it

    # The fault tests kill the worker while the first delivery hangs here (received, not
    # acked); a redelivery records again and returns. Both report a provider call.
    @actor(max_retries=0)
    def oc_hang_once(rec: str, tag: str, node: str, flag: str) -> None:
        first = recorder.first(flag)
        record(rec, tag, "oc_hang_once" if first else "oc_hang_once-again", node)
        usage = {"input_tokens": 10, "output_tokens": 2}
        metering.record_call(provider="fake", model="fake-1", usage=usage, cost=Decimal("0.01"))
        deadline = time.monotonic() + (60 if first else 0)
        while time.monotonic() < deadline:
            time.sleep(0.05)

    return Actors(
        broker=broker,
        queue=queue,
        recorder=recorder,
        record=oc_record,
        flaky=oc_flaky,
        retry_when=oc_retry_when,
        tree=oc_tree,
        step=oc_step,
        ok_with_callback=oc_ok_with_callback,
        fail_with_callback=oc_fail_with_callback,
        slow=oc_slow,
        logs=oc_logs,
        strict=oc_strict,
        stamped=oc_stamped,
        skipped=oc_skipped,
        hang_once=oc_hang_once,
    )


def make_broker(kind: str, url: str, **options: Any) -> Broker:
    """A broker of ``kind``; ``options`` go to a RedisBroker (e.g. ``heartbeat_timeout``;
    ``reconnect_attempts``: redis-py retries a command that lost its connection)."""
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        attempts = options.pop("reconnect_attempts", 0)
        if attempts:
            from redis.backoff import ExponentialBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.retry import Retry

            options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts)
            options["retry_on_error"] = [RedisConnectionError]
        return RedisBroker(url=url, **options)
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        # Celery/kombu spell the default vhost "//"; pika reads that as "" and needs "%2F".
        if url.endswith("//"):
            url = url[:-2] + "/%2F"
        return RabbitmqBroker(url=url)
    from dramatiq.brokers.stub import StubBroker

    return StubBroker()


def make_rate_limiter(record_url: str | None) -> RateLimiterBackend:
    if record_url is None:
        from dramatiq.rate_limits.backends import StubBackend

        return StubBackend()
    from dramatiq.rate_limits.backends import RedisBackend

    return RedisBackend(url=record_url)

"""The Celery app the broker-backed tests run: real workers load it with ``celery -A``.

Every task execution appends a record (its workflow, label, attempt and the envelope it saw)
to a Redis list; the tests compare those records with the envelope each workflow was
published with. The worker's configuration comes from ``OC_*`` environment variables set by
``conftest.py``; the test process builds the same app with `make_app`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import redis
import structlog
from celery import Celery, signals

from ownership_ctx import Keys, Policy, Rule, current, metering
from ownership_ctx.celery import install
from ownership_ctx.logs import OwnershipLogFilter, add_ownership

HASH_KEY = b"celery-tests-hash-key-0123456789"
SIGNING_KEY = b"celery-tests-signing-key-0123456"
KEYS = Keys(hash_key=HASH_KEY, signing_keys=(SIGNING_KEY,))
BEAT_DEFAULTS = {"owner_team": "platform", "workflow_id": "nightly-report", "feature": "reporting"}
_RULES = (
    Rule("oc.q.*", mode="quarantine"),
    Rule("celery.*", mode="quarantine"),  # chord_unlock & co. follow their publisher
    Rule("oc.beat.*", mode="stamp", defaults=BEAT_DEFAULTS),
)
POLICIES = {
    "main": Policy(mode="enforce", rules=_RULES, extra_keys=("cost_center",)),
    "signed": Policy(mode="enforce", rules=_RULES, extra_keys=("cost_center",), trust="signed"),
}


class Boom(Exception):
    """A task failure the tests ask for."""


class Flaky(Exception):
    """A failure that autoretry_for retries."""


_redis: tuple[int, redis.Redis] | None = None
log = logging.getLogger("oc.tasks")
slog = structlog.get_logger("oc.tasks")


def _client(url: str) -> redis.Redis:
    global _redis
    if _redis is None or _redis[0] != os.getpid():  # one connection per (forked) process
        _redis = (os.getpid(), redis.Redis.from_url(url))
    return _redis[1]


def fast_restore(visibility_timeout: float) -> dict[str, float]:
    """Redis transport options: unacked messages are restored after ``visibility_timeout``
    seconds, swept for every second (kombu's defaults: an hour, every 100 s)."""
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }


def make_app(
    *,
    broker: str,
    backend: str | None,
    queue: str,
    records_url: str,
    records_key: str,
    policy: str = "main",
) -> Celery:
    app = Celery("oc", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_deduplicate_successful_tasks=False,
        # After a reconnect Celery (5.7) lowers the prefetch count and restores it from each
        # task's ack: under the threads pool that sends a basic.qos from the pool thread, and
        # if it fails (the connection was reset again) the task has been acked but never runs,
        # with no log line (docs/proof-at-scale.md). OC_PREFETCH_REDUCTION=1: Celery's default.
        worker_enable_prefetch_count_reduction=os.environ.get("OC_PREFETCH_REDUCTION") == "1",
    )
    if os.environ.get("OC_VISIBILITY_TIMEOUT"):  # Redis: unacked messages come back this soon
        app.conf.broker_transport_options = fast_restore(float(os.environ["OC_VISIBILITY_TIMEOUT"]))
    if os.environ.get("OC_CONFIRM_PUBLISH") == "1":
        # RabbitMQ: a publish returns once the broker has the message, not once it is written
        # to a socket that a reset may then drop (retries, children, chain links are not lost).
        app.conf.broker_transport_options = {"confirm_publish": True}

    def record(task: Any, spec: Mapping[str, Any], **extra: Any) -> None:
        envelope = current()
        entry = {
            "wf": spec["wf"],
            "label": spec["label"],
            "try": task.request.retries or 0,
            "task": task.name,
            "id": task.request.id,
            "pid": os.getpid(),
            "env": envelope.as_dict() if envelope is not None else None,
            "custom": task.request.get("custom_tag"),
            **extra,
        }
        if os.environ.get("OC_OTEL") == "1":
            from opentelemetry import baggage, trace

            ctx = trace.get_current_span().get_span_context()
            entry["otel_trace_id"] = format(ctx.trace_id, "032x") if ctx.is_valid else None
            entry["otel_baggage"] = dict(baggage.get_all())
        _client(records_url).rpush(records_key, json.dumps(entry))

    def body(task: Any, spec: Mapping[str, Any]) -> str:
        record(task, spec)
        log.info("stdlib line in %s", spec["label"])
        slog.info("structlog line", label=spec["label"])
        if (task.request.retries or 0) < spec.get("retries", 0):
            raise task.retry(countdown=spec.get("retry_countdown", 0.05), max_retries=10)
        for child in spec.get("spawn", ()):
            node.apply_async((child,), countdown=child.get("countdown"))
        if spec.get("fail"):
            raise Boom(f"asked to fail: {spec['label']}")
        return str(spec["label"])

    @app.task(name="oc.q.node", bind=True, shared=False)
    def node(self: Any, spec: dict[str, Any]) -> str:
        return body(self, spec)

    @app.task(name="oc.e.node", bind=True, shared=False)
    def enforced(self: Any, spec: dict[str, Any]) -> str:
        return body(self, spec)

    @app.task(name="oc.beat.report", bind=True, shared=False)
    def report(self: Any, spec: dict[str, Any]) -> str:
        return body(self, spec)

    @app.task(
        name="oc.q.flaky",
        bind=True,
        shared=False,
        autoretry_for=(Flaky,),
        retry_backoff=0.1,
        retry_jitter=False,
        max_retries=5,
    )
    def flaky(self: Any, spec: dict[str, Any]) -> str:
        record(self, spec)
        if self.request.retries < spec["fails"]:
            raise Flaky(f"flaky {spec['label']}")
        return str(spec["label"])

    def slow_body(task: Any, spec: dict[str, Any]) -> str:
        # The first execution hangs until the test kills the pool process running it.
        first = _client(records_url).set(spec["flag"], "1", nx=True, ex=600)
        record(task, spec, first=bool(first))
        if spec.get("metered"):  # the fault tests count these events in the store
            usage = {"input_tokens": 10, "output_tokens": 2}
            metering.record_call(provider="fake", model="fake-1", usage=usage, cost=Decimal("0.01"))
        if first:
            time.sleep(60)
        return str(spec["label"])

    @app.task(
        name="oc.q.requeued", bind=True, shared=False, acks_late=True, reject_on_worker_lost=True
    )
    def requeued(self: Any, spec: dict[str, Any]) -> str:
        return slow_body(self, spec)

    @app.task(
        name="oc.q.reposted",
        bind=True,
        shared=False,
        acks_late=True,
        retry_on_worker_lost=True,
        default_retry_delay=0.2,
    )
    def reposted(self: Any, spec: dict[str, Any]) -> str:
        return slow_body(self, spec)

    # Killed by its hard time limit: the prefork parent logs it (test_celery_worker_lost.py).
    @app.task(name="oc.q.hard_limited", bind=True, shared=False, time_limit=1, max_retries=0)
    def hard_limited(self: Any, spec: dict[str, Any]) -> str:
        record(self, spec)
        time.sleep(30)
        return str(spec["label"])

    if os.environ.get("OC_HOOKS", "1") == "1":  # 0: the same app without ownership_ctx
        install(app, policy=POLICIES[policy], keys=KEYS)
    return app


def _worker_logging(log_path: str) -> None:
    """JSON lines with the envelope fields: stdlib logging (Celery's own lines) and structlog."""

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps(
                {
                    "src": "stdlib",
                    "logger": record.name,
                    "level": record.levelname,
                    "msg": record.getMessage(),
                    "pid": os.getpid(),
                    "trace_id": getattr(record, "trace_id", None),
                    "owner_team": getattr(record, "owner_team", None),
                    "attribution": getattr(record, "attribution", None),
                }
            )

    handler = logging.FileHandler(log_path)
    handler.addFilter(OwnershipLogFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def source(logger: Any, method: str, event: Any) -> Any:
        event["src"] = "structlog"
        event["pid"] = os.getpid()
        return event

    structlog.configure(
        processors=[add_ownership, source, structlog.processors.JSONRenderer()],
        logger_factory=structlog.WriteLoggerFactory(file=open(log_path, "a")),  # noqa: SIM115
        cache_logger_on_first_use=False,
    )


def _otel() -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    # In each pool child: the instrumentation keeps per-process state (REFERENCES.md).
    CeleryInstrumentor().instrument(tracer_provider=TracerProvider())


if os.environ.get("OC_QUEUE"):  # loaded by a worker started by conftest.py
    app = make_app(
        broker=os.environ["OC_BROKER"],
        backend=os.environ.get("OC_BACKEND") or None,
        queue=os.environ["OC_QUEUE"],
        records_url=os.environ["OC_RECORDS_URL"],
        records_key=os.environ["OC_RECORDS_KEY"],
        policy=os.environ.get("OC_POLICY", "main"),
    )
    _worker_logging(os.environ["OC_LOG"])
    if os.environ.get("OC_SINK_URL"):  # the fault tests read the events back from this store
        from ownership_ctx import sinks

        sinks.install(os.environ["OC_SINK_URL"])
    if os.environ.get("OC_OTEL") == "1":
        signals.worker_process_init.connect(lambda **_: _otel(), weak=False)

    @signals.worker_ready.connect
    def _ready(**_: Any) -> None:
        with open(os.environ["OC_READY"], "w") as fh:
            fh.write(str(os.getpid()))

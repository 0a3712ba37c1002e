"""Celery and Dramatiq apps of the queue tests. Real workers import this module
(``celery -A tests.budgets.queue_workers`` / ``dramatiq tests.budgets.queue_workers``) with
``OC_*`` variables set and install budgets; the test process builds the same apps with
`celery_app` / `dramatiq_actor` to publish with.

Every task / message that runs appends its marker to the Redis list ``OC_RECORDS``.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import redis

from ownership_ctx import Keys, Policy, budgets
from ownership_ctx.budgets import Budget, Budgets
from ownership_ctx.budgets.redis_counters import RedisCounters

POLICY = Policy(mode="enforce", required=("owner_team",))
LIMIT = Decimal("1.00")


def make_budgets(redis_url: str, prefix: str) -> Budgets:
    budget = Budget("support-daily", LIMIT, "day", {"owner_team": "support"})
    return Budgets([budget], RedisCounters(redis_url, prefix=prefix), refresh=0.05)


def _record(marker: str) -> None:
    redis.Redis.from_url(os.environ["OC_REDIS_URL"]).rpush(os.environ["OC_RECORDS"], marker)


def celery_app(broker: str, queue: str) -> Any:
    from celery import Celery

    from ownership_ctx.celery import install

    app = Celery("oc-budget-tests", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        worker_enable_prefetch_count_reduction=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="oc.budgets.work", autoretry_for=(Exception,), max_retries=3)
    def work(marker: str) -> str:
        _record(marker)
        return marker

    install(app, policy=POLICY, keys=Keys())
    return app


def dramatiq_actor(redis_url: str, namespace: str, queue: str) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from ownership_ctx.dramatiq import OwnershipMiddleware

    broker = RedisBroker(url=redis_url, namespace=namespace)
    broker.add_middleware(OwnershipMiddleware(policy=POLICY, keys=Keys()))
    dramatiq.set_broker(broker)

    @dramatiq.actor(
        queue_name=queue, actor_name="oc_budgets_work", max_retries=3, min_backoff=10, broker=broker
    )
    def work(marker: str) -> None:
        _record(marker)

    return work


if "OC_QUEUE" in os.environ:  # imported by a worker
    budgets.install(make_budgets(os.environ["OC_REDIS_URL"], os.environ["OC_BUDGET_PREFIX"]))
    if os.environ.get("OC_KIND") == "celery":
        app = celery_app(os.environ["OC_BROKER"], os.environ["OC_QUEUE"])
    else:
        work = dramatiq_actor(
            os.environ["OC_BROKER"], os.environ["OC_NAMESPACE"], os.environ["OC_QUEUE"]
        )

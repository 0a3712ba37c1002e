"""What OwnershipMiddleware costs a Dramatiq app: on enqueue, and in the worker per message.

Enqueue: ``actor.send()`` on one broker, in one run, with the middleware in the broker's list
and without it, in rounds that rotate the order of the cases, each on an emptied queue (so
drift and queue growth hit every case alike); the fastest round of each case is kept (other
load on the machine only ever adds time). On Redis (when it answers) and on the StubBroker (a
near-zero baseline: the worst case for the ratio). Goal: under 3% on a real broker.

Worker side: the middleware's own hooks for one message (``before_process_message`` +
``after_process_message``: extract, verify, policy, bind, reset), over messages that each carry
a distinct envelope, as they do in production. Goal: under 10 µs per message.

    python benchmarks/dramatiq_overhead.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

from ownership_ctx import Envelope, Keys, Policy, bind, new_trace_id
from ownership_ctx.codec import QUEUE_HEADER
from ownership_ctx.dramatiq import OwnershipMiddleware

REDIS_URL = os.environ.get("OWNERSHIP_CTX_REDIS_URL", "redis://127.0.0.1:6379")
KEYS = Keys(signing_keys=(b"benchmark-signing-key-0000000001",))
Result = dict[str, Any]


def _envelope() -> Envelope:
    return Envelope(
        trace_id=new_trace_id(),
        owner_team="search",
        workflow_id="ticket-flow",
        feature="triage",
        tenant="h1:" + "ab" * 16,
    )


def _redis_answers() -> bool:
    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 0.5):
            return True
    except OSError:
        return False


def _per_call(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def bench_enqueue(name: str, broker: dramatiq.Broker, n: int, rounds: int) -> list[Result]:
    middleware = OwnershipMiddleware(policy=Policy(mode="quarantine"), keys=KEYS)
    broker.add_middleware(middleware)
    queue = f"oc-bench-{os.getpid()}"

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"bench_{name}")
    def target(x: int) -> None:  # never run: only enqueued
        pass

    without = [m for m in broker.middleware if m is not middleware]
    with_ours = [middleware, *without]

    def send() -> None:
        target.send(1)

    samples: dict[str, list[float]] = {"without": [], "with": [], "with-unbound": []}
    order = list(samples)
    with bind(_envelope()):
        _per_call(send, n // 4)  # warm up connections and caches
    broker.flush(queue)
    for round_ in range(rounds):
        # Each case in every position in turn, each on an empty queue: on Redis an enqueue
        # costs more as the queue grows, which would charge whichever case runs last.
        for case in order[round_ % 3 :] + order[: round_ % 3]:
            broker.middleware = with_ours if case != "without" else without
            if case == "with-unbound":
                samples[case].append(_per_call(send, n))  # nothing bound: mints a trace id
            else:
                with bind(_envelope()):
                    samples[case].append(_per_call(send, n))
            broker.flush(queue)
    base = min(samples["without"])
    results = [
        {
            "case": f"enqueue {name}",
            "metric": "without middleware",
            "value": base * 1e6,
            "unit": "µs",
        }
    ]
    for case, label in (("with", "with middleware"), ("with-unbound", "with, nothing bound")):
        value = min(samples[case])
        results.append(
            {"case": f"enqueue {name}", "metric": label, "value": value * 1e6, "unit": "µs"}
        )
        results.append(
            {
                "case": f"enqueue {name}",
                "metric": f"overhead ({label})",
                "value": (value / base - 1) * 100,
                "unit": "%",
            }
        )
    broker.close()
    return results


def bench_worker(n: int, rounds: int) -> list[Result]:
    """The middleware's hooks around one message, as the worker thread calls them."""
    broker = StubBroker()
    results = []
    cases: dict[str, tuple[Keys | None, Callable[[], dict[str, str]]]] = {
        "signed envelope": (KEYS, lambda: {QUEUE_HEADER: _header(KEYS)}),
        "unsigned envelope": (Keys(), lambda: {QUEUE_HEADER: _header(Keys())}),
        "no envelope (quarantined)": (Keys(), dict),
    }
    for case, (keys, options) in cases.items():
        middleware = OwnershipMiddleware(policy=Policy(mode="quarantine"), keys=keys)
        samples = []
        for _ in range(rounds):
            proxies = [
                MessageProxy(dramatiq.Message("q", "actor", (), {}, options())) for _ in range(n)
            ]
            before, after = middleware.before_process_message, middleware.after_process_message
            start = time.perf_counter()
            for proxy in proxies:
                before(broker, proxy)
                after(broker, proxy)
            samples.append((time.perf_counter() - start) / n)
        value = statistics.median(samples)
        results.append(
            {"case": "worker per message", "metric": case, "value": value * 1e6, "unit": "µs"}
        )
    return results


def bench_hooks(n: int, rounds: int) -> list[Result]:
    """The middleware's own enqueue hooks for one message (no broker work at all)."""
    broker = StubBroker()
    results = []
    for case, keys, bound in (
        ("signed", KEYS, True),
        ("unsigned", Keys(), True),
        ("signed, nothing bound", KEYS, False),
    ):
        middleware = OwnershipMiddleware(policy=Policy(mode="quarantine"), keys=keys)
        broker.middleware = [middleware]
        samples = []
        for _ in range(rounds):
            messages = [dramatiq.Message("q", "actor", (), {}, {}) for _ in range(n)]
            before, after = middleware.before_enqueue, middleware.after_enqueue
            with bind(_envelope() if bound else None):
                start = time.perf_counter()
                for message in messages:
                    before(broker, message, None)
                    after(broker, message, None)
                samples.append((time.perf_counter() - start) / n)
        value = statistics.median(samples) * 1e6
        results.append({"case": "enqueue hooks only", "metric": case, "value": value, "unit": "µs"})
    return results


def _header(keys: Keys) -> str:
    from ownership_ctx import encode_header

    return encode_header(_envelope(), keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, noisier numbers")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    n, rounds = (500, 6) if args.quick else (3000, 9)  # rounds: a multiple of the 3 cases

    results = bench_enqueue("stub", StubBroker(), n, rounds)
    if _redis_answers():
        from dramatiq.brokers.redis import RedisBroker

        results += bench_enqueue("redis", RedisBroker(url=f"{REDIS_URL}/2"), n // 5, rounds)
    else:
        print(f"(Redis not reachable at {REDIS_URL}: enqueue on Redis skipped)")
    results += bench_hooks(n * 4, rounds)
    results += bench_worker(n * 4, rounds)

    width = max(len(f"{r['case']} / {r['metric']}") for r in results)
    print(f"{'case / metric':<{width}}  {'value':>10}")
    for r in results:
        print(f"{r['case'] + ' / ' + r['metric']:<{width}}  {r['value']:>10.2f} {r['unit']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()

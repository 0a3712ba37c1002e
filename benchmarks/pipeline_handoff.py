"""What handing an event to the pipeline costs the host's thread, next to the queues it is built on.

    .venv/bin/python benchmarks/pipeline_handoff.py [--quick] [--json PATH]

Every case hands the same pre-built events (distinct dicts, ids and times already set) to its
target, one call per event; rounds are interleaved and the fastest round of each case is kept
(other load on the machine only ever adds time). Ratios are to ``queue.SimpleQueue.put``, the
standard library's thread hand-off, measured in the same run.

- ``deque.append``: the floor (what `Pipeline.emit` does once its two checks pass);
- ``queue.SimpleQueue.put``: the baseline;
- ``Pipeline.emit``, writer idle: the hand-off alone (the queue holds the whole round);
- ``Pipeline.emit``, writer draining: the same while the writer thread takes batches into a
  backend that discards them (the two threads share the GIL: this is what the host sees);
- ``events.emit`` -> Pipeline: through the process-wide sink, which stamps an ``event_id``
  and a ``ts`` on events that have none (here: fresh dicts without either);
- ``ids.new_id``: the id ``events.emit`` stamps, alone; ``uuid.uuid4().hex``: what it
  stamped before (one system call per id: most of the hand-off's time then).

Goal: the hand-off (`Pipeline.emit`, and `events.emit` into it) under 2 µs per event.
"""

from __future__ import annotations

import argparse
import gc
import json
import queue
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ownership_ctx import events
from ownership_ctx.ids import new_id
from ownership_ctx.sinks.pipeline import Pipeline

GOAL_US = 2.0
BASELINE = "queue.SimpleQueue.put"

TEMPLATE: dict[str, Any] = {
    "kind": "provider_call",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "owner_team": "search",
    "workflow_id": "wf-answer",
    "feature": "answer",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "input_tokens": 1200,
    "output_tokens": 300,
    "cost": "0.000360",
}

Result = dict[str, Any]


class Discard:
    def write_batch(self, batch: list[Any]) -> None:
        pass


def make_events(n: int, stamped: bool = True) -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for i in range(n):
        event = dict(TEMPLATE)
        if stamped:
            event["event_id"] = uuid.uuid4().hex
            event["ts"] = now + i * 0.001
        out.append(event)
    return out


def timed(put: Callable[[Any], object], batch: list[dict[str, Any]]) -> float:
    """µs per call of ``put`` over ``batch``, the garbage collector off."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for event in batch:
            put(event)
        return (time.perf_counter_ns() - start) / len(batch) / 1000
    finally:
        gc.enable()


def case_deque(batch: list[dict[str, Any]]) -> float:
    return timed(deque().append, batch)


def case_simple_queue(batch: list[dict[str, Any]]) -> float:
    return timed(queue.SimpleQueue().put, batch)


def case_pipeline_idle(batch: list[dict[str, Any]]) -> float:
    pipeline = Pipeline(Discard(), queue_size=len(batch) + 10, flush_interval=3600)
    pipeline.emit(dict(TEMPLATE))  # start the writer outside the timing
    try:
        return timed(pipeline.emit, batch)
    finally:
        pipeline.close(60)


def case_pipeline_draining(batch: list[dict[str, Any]]) -> float:
    pipeline = Pipeline(Discard(), queue_size=len(batch) + 10, flush_interval=0.001)
    pipeline.emit(dict(TEMPLATE))
    try:
        return timed(pipeline.emit, batch)
    finally:
        pipeline.close(60)


def case_events_emit(batch: list[dict[str, Any]]) -> float:
    fresh = [dict(event) for event in batch]  # no id, no time: events.emit stamps them
    for event in fresh:
        event.pop("event_id", None)
        event.pop("ts", None)
    pipeline = Pipeline(Discard(), queue_size=len(batch) + 10, flush_interval=3600)
    previous = events.set_sink(pipeline)
    events.emit(dict(TEMPLATE))
    try:
        return timed(events.emit, fresh)
    finally:
        events.set_sink(previous)
        pipeline.close(60)


def case_event_id(batch: list[dict[str, Any]]) -> float:
    return timed(lambda _: new_id(), batch)


def case_uuid4(batch: list[dict[str, Any]]) -> float:
    return timed(lambda _: uuid.uuid4().hex, batch)


CASES: list[tuple[str, Callable[[list[dict[str, Any]]], float]]] = [
    ("deque.append", case_deque),
    (BASELINE, case_simple_queue),
    ("Pipeline.emit, writer idle", case_pipeline_idle),
    ("Pipeline.emit, writer draining", case_pipeline_draining),
    ("events.emit -> Pipeline (stamps id+ts)", case_events_emit),
    ("ids.new_id (events.emit's id)", case_event_id),
    ("uuid.uuid4().hex (the id before)", case_uuid4),
]


def run(n: int, rounds: int) -> list[Result]:
    batch = make_events(n)
    best = {name: float("inf") for name, _ in CASES}
    for _ in range(rounds):
        for name, case in CASES:
            best[name] = min(best[name], case(batch))
    baseline = best[BASELINE]
    results: list[Result] = []
    for name, _ in CASES:
        results.append(
            {"case": name, "metric": "per_event", "value": round(best[name], 4), "unit": "us"}
        )
        results.append(
            {
                "case": name,
                "metric": f"ratio_to_{BASELINE}",
                "value": round(best[name] / baseline, 3),
                "unit": "x",
            }
        )
    return results


def print_table(results: list[Result], n: int, rounds: int) -> None:
    print(f"hand-off per event: {n} events per round, fastest of {rounds} interleaved rounds")
    per_event = {r["case"]: r["value"] for r in results if r["metric"] == "per_event"}
    ratio = {r["case"]: r["value"] for r in results if r["metric"] != "per_event"}
    width = max(len(name) for name in per_event)
    print(f"{'case':<{width}}  {'µs/event':>9}  {'x SimpleQueue.put':>17}")
    for name, value in per_event.items():
        print(f"{name:<{width}}  {value:>9.3f}  {ratio[name]:>17.2f}")
    for case in ("Pipeline.emit, writer idle", "events.emit -> Pipeline (stamps id+ts)"):
        took = per_event[case]
        verdict = "met" if took < GOAL_US else "NOT met"
        print(f"goal: {case} < {GOAL_US} µs per event: {verdict} ({took:.3f} µs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and rounds")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    n, rounds = (20_000, 3) if args.quick else (200_000, 7)
    print("running ...", file=sys.stderr, flush=True)
    results = run(n, rounds)
    print_table(results, n, rounds)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reproduction: a solo-pool worker on RabbitMQ with the rpc:// backend stops consuming after
countdown retries, with or without ownership_ctx's hooks (issue 19, docs/proof-at-scale.md).

    .venv/bin/python tests/celery/repro_rpc_solo.py 0   # hooks uninstalled (OC_HOOKS=0)
    .venv/bin/python tests/celery/repro_rpc_solo.py 1   # hooks installed

Needs the shared RabbitMQ and Redis. Each round publishes 6 tasks that retry twice with a
0.1-0.3 s countdown (18 executions) and waits 30 s; a round that falls short is a stall. Not
collected by pytest: it is a diagnosis, not a check.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1])]


def main(hooks: str, rounds: int) -> int:
    os.environ["OC_HOOKS"] = hooks  # read by tests.celery.app.make_app, here and in the worker
    from ownership_ctx import bind
    from tests.celery.support import Config, Worker, make_envelope, new_wf, records

    name = f"rpc-solo-hooks{hooks}-{os.getpid()}"
    worker = Worker(Config(name, "rabbitmq", "rpc", "solo", 1), Path(tempfile.mkdtemp()))
    worker.start()
    worker.wait_ready()
    node = worker.app.tasks["oc.q.node"]
    try:
        for round_ in range(rounds):
            batch = {}
            for i in range(6):
                wf = new_wf("rpc-solo")
                spec = {"wf": wf, "label": f"n{i}", "retries": 2, "spawn": []}
                spec["retry_countdown"] = 0.1 + 0.1 * (i % 3)
                with bind(make_envelope(i) if hooks == "1" else None):
                    node.apply_async((spec,), countdown=0.1 * (i % 2))
                batch[wf] = 3
            deadline = time.monotonic() + 30
            while True:
                got = collections.Counter(r["wf"] for r in records(set(batch)))
                done = sum(min(got[wf], n) for wf, n in batch.items())
                if done == sum(batch.values()) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            print(f"hooks={hooks} round {round_}: {done}/{sum(batch.values())} executions")
            if done < sum(batch.values()):
                print(f"STALLED: the worker stopped consuming; its log: {worker.log_path}")
                return 1
        return 0
    finally:
        worker.stop()
        worker.cleanup_broker()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "0", int(os.environ.get("ROUNDS", "5"))))

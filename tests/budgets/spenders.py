"""Processes that spend against one shared budget (run with multiprocessing's spawn)."""

from __future__ import annotations

import random
import threading
from decimal import Decimal

from ownership_ctx.budgets import BudgetExceeded, Budgets
from ownership_ctx.budgets.redis_counters import RedisCounters
from tests.budgets.support import envelope, team_budget


def spend_until_refused(redis_url: str, prefix: str, seed: int, threads: int) -> str:
    """Reserve, "call" (real cost at most the reservation) and settle until refused, on
    ``threads`` threads. Returns the largest reservation granted here, as text."""
    budgets = Budgets([team_budget()], RedisCounters(redis_url, prefix=prefix, timeout=5))
    owner = envelope()
    largest = [Decimal(0)]
    lock = threading.Lock()

    def spender(seed: float) -> None:
        rng = random.Random(seed)
        while True:
            amount = Decimal(rng.randint(1, 200)) / 1000
            try:
                held = budgets.reserve(owner, amount)
            except BudgetExceeded:
                return
            assert held is not None and held.amount > 0, "failed open: Redis unreachable"
            with lock:
                largest[0] = max(largest[0], amount)
            threading.Event().wait(rng.random() / 200)  # the provider call
            held.charge(amount * Decimal(rng.randint(60, 100)) / 100)
            held.close()

    rng = random.Random(seed)
    workers = [threading.Thread(target=spender, args=(rng.random(),)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return str(largest[0])

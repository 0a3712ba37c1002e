"""Budgets: spend limits per owner, enforced where work enters, with overshoot bounded.

    from ownership_ctx import budgets
    config = budgets.load("budgets.toml")     # or Budget(...) objects: see docs/budgets.md
    budgets.install(config.build())

Once installed, the edge middleware answers 429 for an owner over a hard limit, Celery and
Dramatiq refuse its messages at publish and in the worker, and metered SDK clients reserve
each call's worst-case cost before sending it (and refuse when the budget is spent). The
core of this package imports only the standard library; Redis is imported by
`ownership_ctx.budgets.redis_counters` alone.
"""

from __future__ import annotations

from .config import BudgetConfig, BudgetConfigError, load, loads
from .counters import BackendUnavailable, Counters, MemoryCounters
from .engine import PLACES, Budgets, Reservation, SpendSource
from .model import Budget, BudgetExceeded, Refusal, period_bounds
from .state import install, uninstall

__all__ = [
    "PLACES",
    "BackendUnavailable",
    "Budget",
    "BudgetConfig",
    "BudgetConfigError",
    "BudgetExceeded",
    "Budgets",
    "Counters",
    "MemoryCounters",
    "Refusal",
    "Reservation",
    "SpendSource",
    "install",
    "load",
    "loads",
    "period_bounds",
    "uninstall",
]

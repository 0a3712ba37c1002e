"""The process's active budgets, read by the adapters' hooks (`active` is None: budgets off).

Adapters look at ``state.active`` once per unit of work; with no budgets installed that is
the only thing budgets cost them.
"""

from __future__ import annotations

from .engine import Budgets

__all__ = ["active", "install", "uninstall"]

active: Budgets | None = None


def install(budgets: Budgets) -> Budgets | None:
    """Enforce ``budgets`` in this process: edge middleware, Celery and Dramatiq hooks and
    metered clients all check them from now on. Returns the budgets installed before."""
    global active
    from ..metering.recorder import set_budget_hook
    from .metering import MeteringHook

    previous, active = active, budgets
    set_budget_hook(MeteringHook(budgets))
    return previous


def uninstall() -> Budgets | None:
    """Stop enforcing budgets (every hook goes back to doing nothing)."""
    global active
    from ..metering.recorder import set_budget_hook

    previous, active = active, None
    set_budget_hook(None)
    return previous

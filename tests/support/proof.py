"""Tallies of the random-workflow property tests: what was checked, per library and deployment.

The property tests call `record` after every example; `summary` prints one table at the end
of the session (both test packages' conftests hook it in) and, with ``OC_PROOF_REPORT`` set,
writes it as JSON. ``OC_PROOF_WORKFLOWS`` is how many workflows each deployment must check
(``make proof``: 1,000); unset, each property test runs its usual number of examples once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

TARGET_ENV = "OC_PROOF_WORKFLOWS"
REPORT_ENV = "OC_PROOF_REPORT"


@dataclass
class Tally:
    examples: int = 0
    workflows: int = 0
    unowned_workflows: int = 0  # published with nothing bound
    executions: int = 0  # units of work run, each checked for its exact envelope
    worker_hops: int = 0  # of those, messages published from inside a worker
    lost: int = 0
    leaked: int = 0
    seconds: float = 0.0


_tallies: dict[tuple[str, str], Tally] = {}
_started: dict[tuple[str, str], float] = {}
_printed = False


def target() -> int:
    """Workflows each deployment must check (0: no target, one hypothesis run)."""
    return int(os.environ.get(TARGET_ENV, "0") or 0)


def tally(library: str, deployment: str) -> Tally:
    key = (library, deployment)
    if key not in _tallies:
        _tallies[key] = Tally()
        _started[key] = time.monotonic()
    return _tallies[key]


def record(
    library: str,
    deployment: str,
    *,
    workflows: int,
    unowned: int,
    executions: int,
    worker_hops: int,
    lost: int,
    leaked: int,
) -> None:
    t = tally(library, deployment)
    t.examples += 1
    t.workflows += workflows
    t.unowned_workflows += unowned
    t.executions += executions
    t.worker_hops += worker_hops
    t.lost += lost
    t.leaked += leaked
    t.seconds = round(time.monotonic() - _started[(library, deployment)], 1)


def rows() -> list[dict[str, Any]]:
    return [{"library": lib, "deployment": dep, **asdict(t)} for (lib, dep), t in _tallies.items()]


def summary(terminalreporter: Any) -> None:
    """The table, once per session, when anything was tallied."""
    global _printed
    if _printed or not _tallies:
        return
    _printed = True
    columns = list(rows()[0])
    write = terminalreporter.write_line
    terminalreporter.section("random workflows checked (zero lost, zero leaked)")
    write("| " + " | ".join(columns) + " |")
    write("|" + "---|" * len(columns))
    for row in rows():
        write("| " + " | ".join(str(row[c]) for c in columns) + " |")
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "w") as fh:
            json.dump(rows(), fh, indent=2)
        write(f"written to {path}")

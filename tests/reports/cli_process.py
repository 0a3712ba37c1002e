"""The ``ownership-ctx`` command run as a user runs it: a subprocess of this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``ownership-ctx ARGS`` with only the store the test names (no OWNERSHIP_CTX_SINK_URL)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("OWNERSHIP_CTX_SINK_URL", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=environment,
        check=False,
    )

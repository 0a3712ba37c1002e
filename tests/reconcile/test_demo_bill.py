"""The demo bills its own traffic plus a laptop key's spend, fetches the bill from the fake
admin API, and its reconcile step names the dark spend and where it came from."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_reconcile_shows_the_laptop_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", "demo", "--days", "1", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250"},
    )
    out = result.stdout
    assert "fetched" in out and "openai-costs rows" in out
    start = out.index(" reconcile --max-unexplained 2%")
    section = out[start : out.find("\n$ ownership-ctx", start)]
    assert re.search(r"dark spend [0-9.]+ USD \([0-9.]+% of billed\)", section), section
    assert "ABOVE the 2% limit" in section
    assert "project proj_laptop key key_laptop" in section
    # Anthropic's 3% discount is price drift, not dark spend: our list price is 3.09% high.
    assert re.search(r"^anthropic\s+\S+\s+[0-9.]+\s+[0-9.]+\s+3\.09%", section, re.M), section
    assert "(exit code 1: the threshold or readiness check failed, as planned)" in section

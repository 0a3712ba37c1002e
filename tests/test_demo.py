"""`make demo` prints the edge example, with each policy outcome."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_edge_demo_shows_every_outcome() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "integrations" / "edge_demo.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert out.count("status 200") == 4 and out.count("status 400") == 2
    assert "attribution='quarantined'" in out and "attribution='stamped'" in out
    assert "feature: missing (required here)" in out
    # Raw ids never appear: hashed at the edge, refused (and not echoed) in baggage.
    assert "acme-corp" not in out and "jane@acme.example" not in out
    assert "tenant='h1:" in out

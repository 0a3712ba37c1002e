"""`ownership-ctx demo --dir X` never deletes what it did not create."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ownership_ctx.demo import MARKER, prepare_directory
from ownership_ctx.reports.timerange import UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_or_empty_directory_becomes_the_demos(tmp_path: Path) -> None:
    prepare_directory(tmp_path / "new" / "demo")
    assert (tmp_path / "new" / "demo" / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_directory(empty)
    assert [p.name for p in empty.iterdir()] == [MARKER]


def test_a_directory_it_does_not_own_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "events.db").write_text("someone else's")
    with pytest.raises(UsageError, match="not empty and was not made by the demo"):
        prepare_directory(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.db", "thesis.tex"]
    a_file = tmp_path / "thesis.tex"
    with pytest.raises(UsageError, match="is a file"):
        prepare_directory(a_file)


def test_its_own_directory_loses_only_its_own_outputs(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    prepare_directory(demo)
    (demo / "events.db").write_text("last run")
    (demo / "events.db.spool").mkdir()
    (demo / "report.html").write_text("last run")
    (demo / "notes.txt").write_text("mine, added later")
    prepare_directory(demo)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER, "notes.txt"]


def test_demo_in_the_working_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("keep")
    result = subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", "demo", "--dir", "."],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "choose another --dir" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

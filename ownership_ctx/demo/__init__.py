"""`ownership-ctx demo`: two simulated weeks of traffic through every part, then the reports.

Embedded defaults only (no servers): a gateway with our middleware, Celery on its in-memory
transport with an in-process worker, Dramatiq on the StubBroker, the official SDK clients
against the fake provider server, and a SQLite store. Then it runs the very commands a user
would: chargeback, coverage (which names the hop the demo broke), audit, an anomaly review of
the team whose spend jumped, and the HTML report. See `ownership_ctx.demo.traffic`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

from ..exit_codes import EXIT_BREACHED, EXIT_OK
from ..reports.timerange import UsageError

if TYPE_CHECKING:
    from ..cli import Context

__all__ = ["HELP", "MARKER", "add_arguments", "prepare_directory", "run"]

#: What ``ownership-ctx --help`` says of the ``demo`` command (`ownership_ctx.cli` registers it).
HELP: Final = "two simulated weeks of traffic through every part, then the reports"

DEFAULT_DIR = "ownership-demo"
BAR_WIDTH = 30
#: The file that marks a directory as the demo's own: only such a directory is reused.
MARKER: Final = ".ownership-ctx-demo"
#: What a run writes (and the next run replaces): nothing else in the directory is touched.
OUTPUTS: Final = (
    "events.db",
    "events.db-wal",
    "events.db-shm",
    "events.db-journal",
    "events.db.spool",
    "report.html",
)
#: Modules the demo runs -> the extra that installs each.
NEEDS: Final = {
    "starlette": "starlette",
    "httpx": "httpx",
    "celery": "celery",
    "dramatiq": "dramatiq",
    "openai": "openai",
    "anthropic": "anthropic",
    "genai_prices": "prices",
}


def check_dependencies() -> None:
    """Every module the demo needs is installed, or one `UsageError` naming the extras."""
    missing = []
    for name in NEEDS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        extras = ",".join(dict.fromkeys(NEEDS[name] for name in missing))
        raise UsageError(
            f"the demo needs {', '.join(missing)}, not installed here:"
            f' pip install "ownership-ctx[{extras}]"'
        )


def prepare_directory(workdir: Path) -> None:
    """Make ``workdir`` ready for a run without ever deleting what the demo did not create.

    A missing or empty directory becomes the demo's (marked with `MARKER`); a marked one has
    only the previous run's `OUTPUTS` removed; anything else is refused with a `UsageError`.
    """
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--dir {workdir} is a file, not a directory: choose another --dir")
    if workdir.is_dir():
        if any(workdir.iterdir()) and not (workdir / MARKER).is_file():
            raise UsageError(
                f"--dir {workdir} is not empty and was not made by the demo; the demo only"
                " writes into an empty or new directory: choose another --dir"
            )
    else:
        try:
            workdir.mkdir(parents=True)
        except OSError as e:
            raise UsageError(f"cannot create --dir {workdir}: {e.strerror or e}") from None
    for name in OUTPUTS:
        target = workdir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    (workdir / MARKER).write_text(
        "Made by `ownership-ctx demo`: a later run replaces the files it wrote here"
        f" ({', '.join(OUTPUTS)}) and nothing else.\n",
        encoding="utf-8",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help=f"where the demo's store and report go (default ./{DEFAULT_DIR}): a new or empty"
        " directory, or one an earlier demo made (its outputs are replaced)",
    )
    parser.add_argument("--days", type=int, default=14, help="simulated days (default 14)")
    parser.add_argument("--seed", type=int, default=7, help="traffic seed (default 7)")


def _monday(weeks_ago: int) -> dt.datetime:
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=today.weekday() + 7 * weeks_ago)


class Bar:
    """A progress bar on stderr: one live line on a terminal, nothing otherwise."""

    def __init__(self, stream: IO[str], total: int) -> None:
        self.stream = stream
        self.total = total
        try:
            self.live = stream.isatty()
        except (AttributeError, ValueError):
            self.live = False

    def __call__(self, done: int) -> None:
        if not self.live:
            return
        filled = BAR_WIDTH * done // self.total
        line = f"  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total} requests"
        self.stream.write("\r" + line)
        if done == self.total:
            self.stream.write("\n")
        self.stream.flush()


class Cli(Protocol):
    """The ``ownership-ctx`` entry point (`ownership_ctx.cli.main`) the reports are run with."""

    def __call__(self, argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int: ...


def run(args: argparse.Namespace, ctx: Context, *, cli: Cli) -> int:
    """``ownership-ctx demo``: the traffic, then each report through ``cli(argv, out=...)``."""
    from .. import Keys
    from ..sinks.config import open_sink
    from .traffic import Parts, drive, plan, simulated

    out = ctx.out
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    check_dependencies()
    workdir = Path(args.dir)
    prepare_directory(workdir)
    db = f"sqlite:///{workdir / 'events.db'}"
    html = workdir / "report.html"
    days = args.days
    first = _monday(weeks_ago=(days + 6) // 7)
    middle = first + dt.timedelta(days=days // 2)
    last = first + dt.timedelta(days=days)
    requests = plan(days, args.seed)

    started = time.perf_counter()
    out.write(
        f"ownership_ctx demo: {len(requests)} requests over {days} simulated days "
        f"({first:%Y-%m-%d} .. {last:%Y-%m-%d}) through a gateway, Celery, Dramatiq and the\n"
        "official OpenAI and Anthropic clients (against a local fake provider), into "
        f"{db}\n"
    )
    out.flush()
    # Demo keys only: real deployments set OWNERSHIP_CTX_HASH_KEY / OWNERSHIP_CTX_SIGNING_KEYS.
    keys = Keys(hash_key=b"demo-hash-key-not-secret", signing_keys=(b"demo-signing-key-0001",))
    sink: Any = open_sink(db, flush_interval=0.05)
    parts = Parts(keys).start()
    try:
        with simulated(sink, first.timestamp()) as simulation:
            drive(parts, requests, simulation, Bar(ctx.err, len(requests)))
    finally:
        parts.stop()
        sink.close()
    out.write(f"traffic done in {time.perf_counter() - started:.1f} s\n")
    # The providers' bill for the same days, fetched from a fake admin API (reconciliation).
    from ..reconcile.demo_bill import bill_demo

    out.write("fetching the providers' bills (a fake admin API)\n")
    bill_demo(db, first, last, out)

    span = ["--since", f"{first:%Y-%m-%d}", "--until", f"{last:%Y-%m-%d}"]
    anomaly = [
        "anomaly",
        "--team",
        "support",
        "--baseline",
        f"{first:%Y-%m-%d}..{middle:%Y-%m-%d}",
        "--current",
        f"{middle:%Y-%m-%d}..{last:%Y-%m-%d}",
    ]
    steps = [
        ["chargeback", "--by", "team", *span],
        ["chargeback", "--by", "team,model", *span],
        ["coverage", "--max-unattributed", "2%", *span],
        ["audit", "--sample", "80", *span],
        ["reconcile", "--max-unexplained", "2%", *span],
        *([anomaly] if middle > first else []),  # one day has no two halves to compare
        ["report", "--html", str(html), *span],
    ]
    for step in steps:
        out.write(f"\n$ ownership-ctx --db {db} {' '.join(step)}\n")
        out.flush()
        code = cli(["--db", db, *step], out=out)
        if code == EXIT_BREACHED:
            out.write(f"(exit code {code}: the threshold or readiness check failed, as planned)\n")
        elif code:
            out.write(f"(exit code {code})\n")
    out.write(
        f"\nThe HTML report: {html.resolve()}\n"
        f"Explore further: ownership-ctx --db {db} trace <a trace id from the audit>\n"
        f"Done in {time.perf_counter() - started:.1f} s.\n"
    )
    return EXIT_OK

"""The ``ownership-ctx`` command: reports over the event store, and a place for more commands.

    ownership-ctx [--db URL] chargeback --by team,model [--since 7d] [--format table|csv|json]
    ownership-ctx coverage --max-unattributed 2%
    ownership-ctx audit --sample 10
    ownership-ctx trace 4bf92f3577b34da6a3ce929d0e0e4736
    ownership-ctx anomaly --team search --baseline 2026-W02 --current 2026-W03
    ownership-ctx report --html report.html

``--db`` takes a sink URL (default: ``$OWNERSHIP_CTX_SINK_URL``, else
``sqlite:///ownership.db``). Exit codes: 0 ok; 1 a threshold was breached (coverage above
``--max-unattributed``, audit not ready, trace not found); 2 usage or configuration error.
Progress goes to stderr (on a terminal, or with ``--progress``); results to stdout.

Adding a command (e.g. ``demo``): in a module listed in `EXTENSIONS`, at import time,

    from ownership_ctx.cli import Command, register
    register(Command("demo", "run the demo", configure=add_arguments, run=run, store=False))

``run(args, ctx) -> int`` gets the parsed arguments and a `Context` (output streams, progress,
and for ``store=True`` commands the opened store and range). Keep that module's heavy imports
inside ``run`` so ``ownership-ctx --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import IO, Final

from ownership_ctx.reports import rendering as render_module
from ownership_ctx.reports.source import Source, StoreError, open_source
from ownership_ctx.reports.timerange import TimeRange, UsageError, parse_period, parse_range

__all__ = [
    "DEFAULT_DB",
    "EXIT_BREACHED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXTENSIONS",
    "Command",
    "Context",
    "main",
    "register",
]

EXIT_OK: Final = 0
EXIT_BREACHED: Final = 1
EXIT_USAGE: Final = 2
DEFAULT_DB: Final = "sqlite:///ownership.db"
ENV_VAR: Final = "OWNERSHIP_CTX_SINK_URL"
#: Modules imported (when present) to register more commands: see the module docstring.
EXTENSIONS: tuple[str, ...] = ("ownership_ctx.demo",)


class Progress:
    """Short status lines on stderr for long work; one live line on a terminal."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.live = enabled and stream.isatty()
        self.started = time.perf_counter()
        self._dirty = False

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        if self.live:
            self.stream.write(f"\r\x1b[K[{elapsed:5.1f}s] {message}")
            self._dirty = True
        else:
            self.stream.write(f"[{elapsed:5.1f}s] {message}\n")
        self.stream.flush()

    def done(self) -> None:
        if self._dirty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._dirty = False


@dataclasses.dataclass
class Context:
    out: IO[str]
    err: IO[str]
    progress: Progress
    db: str
    fmt: render_module.Format = "table"
    time_range: TimeRange | None = None
    source: Source | None = None

    def store(self) -> Source:
        assert self.source is not None, "command registered with store=False"
        return self.source

    def range(self) -> TimeRange:
        assert self.time_range is not None, "command registered with store=False"
        return self.time_range

    def emit(self, document: render_module.Document) -> None:
        self.progress.done()
        self.out.write(render_module.render(document, self.fmt))


Run = Callable[[argparse.Namespace, Context], int]


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Run
    store: bool = True  # gets --db/--since/--until/--format and an opened store


_COMMANDS: dict[str, Command] = {}


def register(command: Command) -> None:
    """Add (or replace) a subcommand."""
    _COMMANDS[command.name] = command


# -- the report commands ------------------------------------------------------------------------


def _chargeback_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--by",
        default="team",
        help="comma-separated: team, workflow, feature, tenant, provider, model, tier"
        " (default: team)",
    )
    p.add_argument(
        "--export",
        choices=("focus",),
        help="write a FinOps FOCUS-shaped CSV (one row per day x owner x model) instead",
    )
    p.add_argument("--output", "-o", help="write to this file instead of stdout")


def _chargeback(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.chargeback import chargeback, parse_by
    from ownership_ctx.reports.focus import focus_csv

    by = parse_by(args.by)
    if args.export == "focus":
        ctx.progress("exporting FOCUS rows")
        text = focus_csv(ctx.store(), ctx.range())
    else:
        ctx.progress("reading rollups")
        text = render_module.render(chargeback(ctx.store(), ctx.range(), by).document(), ctx.fmt)
    ctx.progress.done()
    _write(ctx, text, args.output)
    return EXIT_OK


def _write(ctx: Context, text: str, path: str | None) -> None:
    if path:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        ctx.err.write(f"wrote {path}\n")
    else:
        ctx.out.write(text)


def _threshold_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--max-unattributed",
        default=default,
        metavar="PCT",
        help="threshold for unattributed spend, e.g. 2%% or 0.02"
        + (f" (default {default.replace('%', '%%')})" if default else ""),
    )


def _coverage_args(p: argparse.ArgumentParser) -> None:
    _threshold_arg(p, None)
    p.add_argument(
        "--require",
        default="owner_team,workflow_id,feature",
        help="fields a provider event needs to count as attributed"
        " (default owner_team,workflow_id,feature)",
    )
    p.add_argument(
        "--no-hops",
        action="store_true",
        help="skip the breakdown by hop (it reads the unattributed raw events)",
    )


def _coverage(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.coverage import coverage, parse_required, parse_threshold

    threshold = parse_threshold(args.max_unattributed) if args.max_unattributed else None
    result = coverage(
        ctx.store(),
        ctx.range(),
        required=parse_required(args.require),
        threshold=threshold,
        hops=not args.no_hops,
        progress=ctx.progress,
    )
    ctx.emit(result.document())
    return EXIT_BREACHED if result.breached else EXIT_OK


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", type=int, default=10, help="traces to examine (default 10)")
    _threshold_arg(p, "2%")


def _audit(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.audit import audit
    from ownership_ctx.reports.coverage import parse_threshold

    if args.sample < 1:
        raise UsageError("--sample must be at least 1")
    threshold = parse_threshold(args.max_unattributed)
    result = audit(
        ctx.store(), ctx.range(), sample=args.sample, threshold=threshold, progress=ctx.progress
    )
    ctx.emit(result.document())
    return EXIT_OK if result.ready else EXIT_BREACHED


def _trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace_id", help="32 lowercase hex characters")


def _trace(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.trace import trace_report

    result = trace_report(ctx.store(), args.trace_id)
    ctx.emit(result.document())
    return EXIT_OK if result.found else EXIT_BREACHED


def _anomaly_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--team", required=True, help="owner team to review")
    p.add_argument(
        "--current",
        default="7d",
        help="period under review: 2026-01-12..2026-01-19, 2026-W03, 2026-01, a day, or a"
        " length like 7d ending at --until (default 7d)",
    )
    p.add_argument(
        "--baseline",
        help="period to compare with (same forms; default: as long as --current, just before)",
    )


def _anomaly(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.anomaly import anomaly

    end = ctx.range().end
    current = parse_period(args.current, end=end)
    if args.baseline:
        baseline = parse_period(args.baseline, end=current.start)
    else:
        baseline = TimeRange(current.start - current.seconds, current.start)
    ctx.progress("reading rollups")
    ctx.emit(anomaly(ctx.store(), args.team, baseline, current).document())
    return EXIT_OK


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", required=True, metavar="FILE", help="write the page here")
    p.add_argument("--top", type=int, default=10, help="most expensive requests to list")
    _threshold_arg(p, "2%")


def _report(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.coverage import parse_threshold
    from ownership_ctx.reports.html import build_report, render_html

    threshold = parse_threshold(args.max_unattributed)
    report = build_report(
        ctx.store(), ctx.range(), top=max(0, args.top), threshold=threshold, progress=ctx.progress
    )
    page = render_html(report)
    with open(args.html, "w", encoding="utf-8") as f:
        f.write(page)
    ctx.progress.done()
    share = (report.coverage.share * 100).quantize(Decimal("0.01"))
    ctx.out.write(
        f"wrote {os.path.abspath(args.html)} ({len(page):,} bytes;"
        f" spend {render_module.money_text(report.by_team.total.spend)} USD,"
        f" {share}% unattributed)\n"
    )
    return EXIT_OK


for _command in (
    Command(
        "chargeback", "spend, requests, calls and tokens per owner", _chargeback_args, _chargeback
    ),
    Command("coverage", "unattributed spend, per week and per hop", _coverage_args, _coverage),
    Command("audit", "the seven readiness questions, from recent traces", _audit_args, _audit),
    Command(
        "trace", "one request start to finish, with the cost of each call", _trace_args, _trace
    ),
    Command("anomaly", "why a team's spend changed between two periods", _anomaly_args, _anomaly),
    Command("report", "a self-contained HTML page with charts", _report_args, _report),
):
    register(_command)


# -- parsing and running ------------------------------------------------------------------------


def _load_extensions() -> None:
    for name in EXTENSIONS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the extension exists but something it imports does not
                raise


def _store_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    # Defaults are suppressed so that a value given before the subcommand is not overwritten
    # by the subcommand's default; `_resolve` fills them in.
    s = argparse.SUPPRESS
    p.add_argument("--db", default=s, help=f"store URL (default ${ENV_VAR}, else {DEFAULT_DB})")
    if top:
        return
    p.add_argument(
        "--since", default=s, help="start: 2026-01-05, 2026-01-05T10:00, 7d (default 30d)"
    )
    p.add_argument("--until", default=s, help="end (exclusive): same forms (default now)")
    p.add_argument("--format", choices=("table", "csv", "json"), default=s, help="output format")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="progress on stderr (default: when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    _load_extensions()
    parser = argparse.ArgumentParser(
        prog="ownership-ctx",
        description="Who spent what on LLM calls: reports over the ownership_ctx event store.",
        epilog="exit codes: 0 ok, 1 threshold breached / not ready / not found, 2 usage error",
    )
    _store_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.store:
            _store_options(p, top=False)
        command.configure(p)
        p.set_defaults(_command=command)
    return parser


def _resolve(args: argparse.Namespace) -> None:
    args.db = getattr(args, "db", None) or os.environ.get(ENV_VAR, "").strip() or DEFAULT_DB
    for name, default in (
        ("since", None),
        ("until", None),
        ("format", "table"),
        ("progress", None),
    ):
        if not hasattr(args, name):
            setattr(args, name, default)


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    stdout = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    _resolve(args)
    command: Command = args._command
    progress = Progress(sys.stderr, sys.stderr.isatty() if args.progress is None else args.progress)
    ctx = Context(stdout, sys.stderr, progress, args.db, args.format)
    try:
        if command.store:
            ctx.time_range = parse_range(args.since, args.until)
            progress(f"opening {_redacted(args.db)}")
            ctx.source = open_source(args.db)
        try:
            return command.run(args, ctx)
        finally:
            progress.done()
            if ctx.source is not None:
                ctx.source.close()
    except (UsageError, StoreError) as e:
        sys.stderr.write(f"ownership-ctx {command.name}: error: {e}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        # `ownership-ctx ... | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _redacted(url: str) -> str:
    """The URL without a password, for progress lines."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}@{host}"
    return url


if __name__ == "__main__":
    # Through the package module, so extensions register into the same registry.
    from ownership_ctx.cli import main as _main

    sys.exit(_main())

"""The ``ownership-ctx`` command: reports over the event store, and a place for more commands.

    ownership-ctx [--db URL] chargeback --by team,model [--since 7d] [--format table|csv|json]
    ownership-ctx coverage --max-unattributed 2%
    ownership-ctx audit --sample 10
    ownership-ctx trace 4bf92f3577b34da6a3ce929d0e0e4736
    ownership-ctx anomaly --team search --baseline 2026-W02 --current 2026-W03
    ownership-ctx report --html report.html

``--db`` takes a store URL or a SQLite file's path (default: ``$OWNERSHIP_CTX_SINK_URL``, else
``sqlite:///ownership.db``, the store `ownership_ctx.sinks.install` writes by default). Options
go before or after the command. Reports only read: the store is opened read-only.
Exit codes: 0 ok; 1 a threshold was breached (coverage above ``--max-unattributed``, audit not
ready); 2 anything wrong with the input or the environment (bad option, no such store, file or
trace, unknown team, a missing extra), always as one line on stderr naming what to do.
Progress goes to stderr on a terminal (or with ``--progress``); results to stdout, with
identifiers cut to the terminal's width only when stdout is a terminal.

Adding a command: in a module listed in `EXTENSIONS` (imported when present), at import time,

    from ownership_ctx.cli import Command, register
    register(Command("weekly", "the weekly digest", configure=add_arguments, run=run))

``run(args, ctx) -> int`` gets the parsed arguments and a `Context` (output streams, progress,
and for ``store=True`` commands the opened store and range). Keep that module's heavy imports
inside ``run`` so ``ownership-ctx --help`` stays fast. The package's own ``demo`` is registered
here, explicitly: `ownership_ctx.demo` does not import this module (no import cycle); it gets
`main` as an argument to run the reports with.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import IO, Any, Final, NoReturn

from ownership_ctx import __version__, demo
from ownership_ctx.exit_codes import EXIT_BREACHED, EXIT_OK, EXIT_USAGE
from ownership_ctx.reports import Source, StoreError, open_source
from ownership_ctx.reports import rendering as render_module
from ownership_ctx.reports.timerange import (
    TimeRange,
    UsageError,
    parse_period,
    parse_range,
    period_before,
    stamp,
)
from ownership_ctx.sinks.config import DEFAULT_URL, ENV_VAR, redacted_url, resolve_url

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

DEFAULT_DB: Final = DEFAULT_URL
#: A module that is not installed -> the extra that installs it.
EXTRAS: Final = {
    "psycopg": "postgres",
    "dramatiq": "dramatiq",
    "pika": "dramatiq",
    "celery": "celery",
    "kombu": "celery",
    "redis": "celery",
    "starlette": "starlette",
    "fastapi": "fastapi",
    "flask": "flask",
    "httpx": "httpx",
    "requests": "requests",
    "openai": "openai",
    "anthropic": "anthropic",
    "genai_prices": "prices",
    "opentelemetry": "otel",
    "structlog": "structlog",
}
#: Modules imported (when present) to register more commands: see the module docstring.
EXTENSIONS: tuple[str, ...] = ()


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

    def render(self, document: render_module.Document) -> str:
        """The document in the chosen format; cut to the width of stdout only on a terminal."""
        width = shutil.get_terminal_size((120, 24)).columns if _isatty(self.out) else None
        return render_module.render(document, self.fmt, width)

    def emit(self, document: render_module.Document) -> None:
        self.progress.done()
        self.out.write(self.render(document))


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def missing_module(error: ModuleNotFoundError) -> str:
    """One line for an optional dependency that is not installed: which extra brings it."""
    name = (error.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return f"the Python module {name or error} is not installed"
    return f'this needs {name}, which is not installed: pip install "ownership-ctx[{extra}]"'


def check_output_path(path: str) -> str:
    """``path`` if a file can be written there; else a `UsageError` naming what is wrong."""
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise UsageError(f"{path} is a directory: give a file name")
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: the directory {parent} is not writable")
    return path


Run = Callable[[argparse.Namespace, Context], int]


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Run
    store: bool = True  # gets --db/--since/--until/--format and an opened store
    ranged: bool = True  # reads a time range (--since/--until): notes when it holds nothing
    #: Which of --since / --until it reads (the others are refused, not ignored).
    bounds: tuple[str, ...] = ("since", "until")
    #: Checks the arguments (output paths, ...) before the store is opened: fail fast.
    check: Callable[[argparse.Namespace], None] | None = None


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
        document = chargeback(ctx.store(), ctx.range(), by).document()
        text = render_module.render(document, ctx.fmt) if args.output else ctx.render(document)
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
        help="skip the breakdown by hop (where unattributed calls lost their owner)",
    )
    p.add_argument(
        "--include-dark-spend",
        action="store_true",
        help="count billed spend no event saw (from imported provider bills, see reconcile)"
        " as unattributed",
    )


def _coverage(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.coverage import (
        coverage,
        parse_required,
        parse_threshold,
        with_dark_spend,
    )

    threshold = parse_threshold(args.max_unattributed) if args.max_unattributed else None
    result = coverage(
        ctx.store(),
        ctx.range(),
        required=parse_required(args.require),
        threshold=threshold,
        hops=not args.no_hops,
        progress=ctx.progress,
    )
    if args.include_dark_spend:
        from ownership_ctx.reconcile.render import dark_spend

        span = ctx.range()
        result = with_dark_spend(result, dark_spend(ctx.db, span.start, span.end))
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
    p.add_argument("trace_id", help="a trace id (32 hex) or any unambiguous prefix of 8 or more")


_HEX: Final = frozenset("0123456789abcdef")


def _trace(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reports.trace import trace_report

    wanted = args.trace_id.strip().lower()
    if not 8 <= len(wanted) <= 32 or not set(wanted) <= _HEX:
        raise UsageError(
            f"a trace id is 32 hex characters (or a prefix of 8 or more), not {args.trace_id!r}"
        )
    if len(wanted) < 32:
        matches = ctx.store().trace_ids(wanted, limit=11)
        if not matches:
            raise UsageError(f"no trace starting with {wanted} in {ctx.db}")
        if len(matches) > 1:
            listed = "\n".join(f"  {m}" for m in matches[:10])
            more = "\n  ..." if len(matches) > 10 else ""
            raise UsageError(
                f"{wanted} is ambiguous; give more characters. Traces starting with it:\n"
                f"{listed}{more}"
            )
        wanted = matches[0]
    result = trace_report(ctx.store(), wanted)
    if not result.found:
        raise UsageError(f"no trace {wanted} in {ctx.db}")
    ctx.emit(result.document())
    return EXIT_OK


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
        baseline = period_before(current)
    ctx.progress("reading rollups")
    _check_team(ctx.store(), args.team, baseline, current)
    ctx.emit(anomaly(ctx.store(), args.team, baseline, current).document())
    return EXIT_OK


def _check_team(source: Source, team: str, baseline: TimeRange, current: TimeRange) -> None:
    """An unknown team (no events in either period) is an input error, not a zero report."""
    start, end = min(baseline.start, current.start), max(baseline.end, current.end)
    rows = source.rollups(start, end, where={"owner_team": team})
    if any(r.calls or r.requests for r in rows):
        return
    seen = [
        str(r.group["owner_team"])
        for r in source.rollups(start, end, group_by=("owner_team",))
        if r.group["owner_team"] is not None and (r.calls or r.requests)
    ]
    known = f"teams with events then: {', '.join(seen)}" if seen else "no team has events then"
    raise UsageError(
        f"no events of team {team!r} between {stamp(start)} and {stamp(end)} ({known})"
    )


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", required=True, metavar="FILE", help="write the page here")
    p.add_argument("--top", type=int, default=10, help="most expensive requests to list")
    _threshold_arg(p, "2%")


def _report(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reconcile.render import report_section
    from ownership_ctx.reports.coverage import parse_threshold
    from ownership_ctx.reports.html import build_report, render_html

    threshold = parse_threshold(args.max_unattributed)
    report = build_report(
        ctx.store(), ctx.range(), top=max(0, args.top), threshold=threshold, progress=ctx.progress
    )
    bills = report_section(ctx.db, report.range.start, report.range.end)  # None: no bills
    if bills is not None:
        report = dataclasses.replace(report, sections=[*report.sections, bills])
    page = render_html(report).encode("utf-8")
    with open(args.html, "wb") as f:
        f.write(page)
    ctx.progress.done()
    share = (report.coverage.share * 100).quantize(Decimal("0.01"))
    ctx.out.write(
        f"wrote {os.path.abspath(args.html)} ({len(page):,} bytes;"
        f" spend {render_module.money_text(report.by_team.total.spend)} USD,"
        f" {share}% unattributed)\n"
    )
    return EXIT_OK


def _fake_provider_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")


def _fake_provider(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.testing.fake_providers import serve

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number")
    try:
        serve(args.port, args.host, ctx.out)
    except OSError as e:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (try another --port)"
        ) from None
    return EXIT_OK


def _budgets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the budget file (TOML; default $OWNERSHIP_CTX_BUDGETS)",
    )
    p.add_argument("--at", help="when: 2026-01-05, 2026-01-05T10:00 (default now)")


def _budget_file(args: argparse.Namespace) -> object:
    from ownership_ctx.budgets import BudgetConfigError, load
    from ownership_ctx.budgets.html import BUDGETS_ENV

    path = args.config or os.environ.get(BUDGETS_ENV)
    if not path:
        raise UsageError(f"no budget file: give --config FILE or set {BUDGETS_ENV}")
    try:
        return load(path)
    except BudgetConfigError as e:
        raise UsageError(str(e)) from None


def _check_budgets(args: argparse.Namespace) -> None:
    config: Any = _budget_file(args)  # a bad file fails before the store is opened
    store = config.settings.get("store")
    if store and not args.db_option:  # no --db: the store the file names, before the default
        args.db = resolve_url(str(store))


def _budgets(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.budgets.report import budget_status
    from ownership_ctx.reports.budgets import budgets_document

    config: Any = _budget_file(args)
    at = parse_range(None, args.at).end if args.at else time.time()
    ctx.progress("reading rollups")
    report = budget_status(config.budgets, ctx.store(), at)
    ctx.emit(budgets_document(report))
    return EXIT_BREACHED if report.over else EXIT_OK


def _check_chargeback(args: argparse.Namespace) -> None:
    if args.output:
        check_output_path(args.output)


def _check_report(args: argparse.Namespace) -> None:
    check_output_path(args.html)


def _reconcile_args(p: argparse.ArgumentParser) -> None:
    from ownership_ctx.reconcile.command import add_arguments

    add_arguments(p)


def _reconcile(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.reconcile.command import run

    return run(args, ctx)


for _command in (
    Command(
        "chargeback",
        "spend, requests, calls and tokens per owner",
        _chargeback_args,
        _chargeback,
        check=_check_chargeback,
    ),
    Command("coverage", "unattributed spend, per week and per hop", _coverage_args, _coverage),
    Command("audit", "the seven readiness questions, from recent traces", _audit_args, _audit),
    Command(
        "trace",
        "one request start to finish, with the cost of each call",
        _trace_args,
        _trace,
        ranged=False,
        bounds=(),
    ),
    Command(
        "anomaly",
        "why a team's spend changed between two periods",
        _anomaly_args,
        _anomaly,
        ranged=False,  # its periods are --baseline / --current
        bounds=("until",),  # where a relative --current ends
    ),
    Command(
        "fake-provider",
        "a local fake OpenAI / Anthropic / Gemini / Bedrock API: try things without keys",
        _fake_provider_args,
        _fake_provider,
        store=False,
    ),
    Command(
        "reconcile",
        "provider bills vs our events: dark spend, price drift, per day and model",
        _reconcile_args,
        _reconcile,
        store=False,  # imports write the bill tables; the report opens them read-only
    ),
    Command(
        "budgets",
        "each budget's spend, share used and forecast; exit 1 when one is over",
        _budgets_args,
        _budgets,
        ranged=False,  # each budget's own period
        bounds=(),
        check=_check_budgets,
    ),
    Command(
        "report",
        "a self-contained HTML page with charts",
        _report_args,
        _report,
        check=_check_report,
    ),
    Command(
        "demo",
        demo.HELP,
        demo.add_arguments,
        lambda args, ctx: demo.run(args, ctx, cli=main),
        store=False,
    ),
):
    register(_command)


# -- retention ----------------------------------------------------------------------------------


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--before", required=True, metavar="DATE", help="remove events before this UTC day"
    )
    p.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"store URL or SQLite file path (default ${ENV_VAR}, else {DEFAULT_DB})",
    )


def _prune(args: argparse.Namespace, ctx: Context) -> int:
    from ownership_ctx.sinks.config import open_reader
    from ownership_ctx.store.retention import describe, parse_day

    try:
        before = parse_day(args.before)
    except ValueError as e:
        raise UsageError(str(e)) from None
    store = open_reader(args.db, readonly=False)  # the store that is there: never a new one
    try:
        pruned = store.prune(before)
    except Exception as e:
        if isinstance(e, StoreError) or not store.is_database_error(e):
            raise
        raise StoreError(f"cannot prune {redacted_url(args.db)}: {str(e).splitlines()[0]}") from e
    finally:
        store.close()
    ctx.out.write(describe(pruned, before) + "\n")
    return EXIT_OK


register(
    Command(
        "prune",
        "remove events before a day (PostgreSQL: drops whole day partitions)",
        _prune_args,
        _prune,
        store=False,
    )
)


# -- parsing and running ------------------------------------------------------------------------


def _load_extensions() -> None:
    for name in EXTENSIONS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the extension exists but something it imports does not
                raise


def _store_options(
    p: argparse.ArgumentParser, *, top: bool, bounds: tuple[str, ...] = ("since", "until")
) -> None:
    # Defaults are suppressed so that a value given before the subcommand is not overwritten
    # by the subcommand's default; `_resolve` fills them in.
    s = argparse.SUPPRESS
    p.add_argument(
        "--db",
        default=s,
        metavar="URL",
        help=f"store URL or SQLite file path (default ${ENV_VAR}, else {DEFAULT_DB})",
    )
    if top:
        p.add_argument("--version", action="version", version=f"ownership-ctx {__version__}")
    # Commands with periods of their own (trace, anomaly, budgets) take fewer bounds, or none.
    if "since" in bounds:
        p.add_argument(
            "--since", default=s, help="start: 2026-01-05, 2026-01-05T10:00, 7d (default 30d)"
        )
    if "until" in bounds:
        p.add_argument("--until", default=s, help="end (exclusive): same forms (default now)")
    p.add_argument("--format", choices=("table", "csv", "json"), default=s, help="output format")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="progress on stderr (default: when stderr is a terminal)",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other error of the command (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    _load_extensions()
    parser = _Parser(
        prog="ownership-ctx",
        description="Who spent what on LLM calls: reports over the ownership_ctx event store.",
        epilog="options go before or after the command. exit codes: 0 ok, 1 threshold"
        " breached / not ready, 2 anything wrong with the input or the environment",
    )
    _store_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.store:
            _store_options(p, top=False, bounds=command.bounds)
        command.configure(p)
        p.set_defaults(_command=command)
    return parser


def _resolve(args: argparse.Namespace) -> None:
    args.db_option = getattr(args, "db", None)  # as given (None: no --db)
    args.db = resolve_url(args.db_option)
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
    enabled = _isatty(sys.stderr) if args.progress is None else args.progress
    progress = Progress(sys.stderr, enabled)
    ctx = Context(stdout, sys.stderr, progress, args.db, args.format)
    try:
        for bound in ("since", "until"):
            if bound not in command.bounds and getattr(args, bound) is not None:
                # Given before the command name: say so rather than ignore it.
                raise UsageError(
                    f"--{bound} does not apply to {command.name}:"
                    f" {_OWN_PERIOD.get(command.name, 'it reads a period of its own')}"
                )
        if command.check is not None:
            command.check(args)
            ctx.db = args.db  # a check may choose the store (budgets: the file's `store`)
        if command.store:
            ctx.time_range = parse_range(args.since, args.until)
            progress(f"opening {redacted_url(args.db)}")
            ctx.source = open_source(args.db)
        try:
            code = command.run(args, ctx)
            if ctx.source is not None:
                _note_empty(ctx, command)  # after the results: they were asked for
            return code
        finally:
            progress.done()
            if ctx.source is not None:
                ctx.source.close()
    except BrokenPipeError:
        # `ownership-ctx ... | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (UsageError, StoreError) as e:
        message = str(e)
    except ModuleNotFoundError as e:
        message = missing_module(e)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        message = f"cannot use{where}: {e.strerror or e}"
    except KeyboardInterrupt:
        sys.stderr.write(f"ownership-ctx {command.name}: interrupted\n")
        return 130
    sys.stderr.write(f"ownership-ctx {command.name}: error: {message}\n")
    return EXIT_USAGE


#: What sets the period of the commands that take no --since / --until.
_OWN_PERIOD: Final = {
    "trace": "a trace is shown whole",
    "anomaly": "use --baseline and --current (--until ends a relative --current)",
    "budgets": "each budget has its own period (use --at)",
}


def _note_empty(ctx: Context, command: Command) -> None:
    """Say so on stderr when the store is empty, or holds nothing in the asked range."""
    extent = ctx.store().extent()
    if extent is None:
        ctx.err.write(
            f"ownership-ctx: the store {redacted_url(ctx.db)} holds no events yet. Events come"
            " from an app that calls ownership_ctx.sinks.install() (it writes"
            f" {DEFAULT_DB} unless {ENV_VAR} says otherwise); `ownership-ctx demo` shows"
            " the reports on sample traffic.\n"
        )
        return
    first, last = extent
    span = ctx.range()
    if command.ranged and (last < span.start or first >= span.end):
        ctx.err.write(
            f"ownership-ctx: no events between {stamp(span.start)} and {stamp(span.end)};"
            f" the store holds events from {stamp(first)} to {stamp(last + 3600)}"
            " (use --since / --until)\n"
        )


if __name__ == "__main__":
    # Through the package module, so extensions register into the same registry.
    from ownership_ctx.cli import main as _main

    sys.exit(_main())

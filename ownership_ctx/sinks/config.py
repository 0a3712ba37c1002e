"""Sinks from URLs: ``install()`` once at start-up, from code or ``OWNERSHIP_CTX_SINK_URL``.

=============================================  ===============================================
``sqlite:///events.db``                        SQLite file, relative to the working directory
``sqlite:////var/lib/app/events.db``           ... absolute path (four slashes, as SQLAlchemy)
``postgresql://user:pw@host:5432/db``          PostgreSQL (``postgres://`` too); ``?schema=``
``jsonl:///events.jsonl``                      JSON lines file (same slash rule as sqlite)
``memory://``                                  `MemorySink`, synchronous (tests, demos)
``otel://``                                    OpenTelemetry log records (global provider)
=============================================  ===============================================

Query parameters tune the pipeline (all optional): ``queue`` (events held in memory, default
20000), ``batch`` (2000), ``interval`` (seconds between writes when idle, 0.1), ``spool``
(directory; ``off`` drops instead of spilling; default next to a SQLite file, else under
``$XDG_STATE_HOME``/``~/.local/state``), ``spool_max_mb`` (1024), ``retry_max`` (seconds, 5),
``close_timeout`` (seconds the exit hook waits, 10); SQLite also takes ``busy_timeout``
(seconds, 5) and ``synchronous`` (NORMAL/FULL), PostgreSQL ``schema``, ``connect_timeout``.
Other PostgreSQL parameters go to libpq untouched.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ownership_ctx import events
from ownership_ctx.sinks.pipeline import Backend, Pipeline, creatable_dir

if TYPE_CHECKING:
    from ownership_ctx.store import StoreBase

__all__ = [
    "DEFAULT_URL",
    "ENV_VAR",
    "from_env",
    "install",
    "open_backend",
    "open_reader",
    "open_sink",
    "open_store",
    "redacted_url",
    "resolve_url",
]

ENV_VAR: Final = "OWNERSHIP_CTX_SINK_URL"
#: The one default store: what `install`, the OpenTelemetry path and the ``ownership-ctx``
#: command use when given no URL and the environment sets none.
DEFAULT_URL: Final = "sqlite:///ownership.db"
_SCHEMES: Final = ("sqlite", "postgresql", "postgres", "jsonl", "memory", "otel")

_PIPELINE_OPTIONS: Final[dict[str, tuple[str, type]]] = {
    "queue": ("queue_size", int),
    "batch": ("batch_size", int),
    "interval": ("flush_interval", float),
    "retry_max": ("retry_max", float),
    "close_timeout": ("close_timeout", float),
}
_SQLITE_OPTIONS: Final[dict[str, tuple[str, type]]] = {
    "busy_timeout": ("busy_timeout", float),
    "synchronous": ("synchronous", str),
    "cache_mb": ("cache_mb", int),
}
_PG_OPTIONS: Final[dict[str, tuple[str, type]]] = {
    "schema": ("schema", str),
    "connect_timeout": ("connect_timeout", float),
}
_OURS: Final = {*_PIPELINE_OPTIONS, *_SQLITE_OPTIONS, *_PG_OPTIONS, "spool", "spool_max_mb"}


_KIND_NAMES: Final[dict[type, str]] = {int: "a whole number", float: "a number"}


class _Parsed:
    __slots__ = ("params", "path", "scheme", "url")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.scheme = parts.scheme.lower()
        if self.scheme == "postgres":
            self.scheme = "postgresql"
        self.params = dict(parse_qsl(parts.query, keep_blank_values=True))
        # sqlite:///rel/path and sqlite:////abs/path: drop the one slash that ends "//host/".
        self.path = parts.path[1:] if parts.path.startswith("/") else parts.path

    def options(self, table: Mapping[str, tuple[str, type]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (name, kind) in table.items():
            if key in self.params:
                try:
                    out[name] = kind(self.params[key])
                except ValueError:
                    wanted = _KIND_NAMES.get(kind, kind.__name__)
                    raise ValueError(
                        f"sink URL: {key}={self.params[key]!r} is not {wanted}"
                    ) from None
        return out

    def libpq_url(self) -> str:
        parts = urlsplit(self.url)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in _OURS])
        return urlunsplit(("postgresql", parts.netloc, parts.path, query, parts.fragment))


def resolve_url(url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The store URL to use: ``url``, else ``OWNERSHIP_CTX_SINK_URL``, else `DEFAULT_URL`.

    A bare path (``events.db``, ``/var/lib/app/events.db``) means that SQLite file.
    """
    env = os.environ if environ is None else environ
    chosen = (url or "").strip() or env.get(ENV_VAR, "").strip() or DEFAULT_URL
    scheme, sep, _ = chosen.partition("://")
    if sep and scheme.lower() in _SCHEMES:
        return chosen
    if sep or chosen.partition(":")[0].lower() in _SCHEMES:
        return chosen  # an unknown or malformed scheme: open_backend names it
    return "sqlite:///" + chosen  # relative stays relative; "/abs" gives four slashes


def _state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "ownership_ctx", "spool")


def _spool_dir(parsed: _Parsed) -> str | None:
    value = parsed.params.get("spool")
    if value is not None:
        return None if value.lower() in ("", "off", "none", "0") else value
    if parsed.scheme == "sqlite":
        # Next to the database: same disk, same lifetime, found again by the next start.
        return os.path.abspath(parsed.path) + ".spool"
    if parsed.scheme == "postgresql":
        # One directory per database (credentials left out of the name).
        parts = urlsplit(parsed.url)
        target = f"{parts.hostname}:{parts.port}{parts.path}?{parsed.params.get('schema', '')}"
        name = "pg-" + hashlib.sha256(target.encode()).hexdigest()[:16]
        # The directory is created when something is first spooled, not here: a writable
        # parent is enough to choose it.
        for base in (_state_dir(), os.path.join(tempfile.gettempdir(), "ownership_ctx-spool")):
            if creatable_dir(base):
                return os.path.join(base, name)
    return None


def open_backend(url: str, *, readonly: bool = False, create: bool = True) -> Any:
    """The store or writer behind ``url``, without a pipeline (readers; benchmarks).
    ``readonly``: a store that never writes, creates nothing, and fails when it is missing;
    ``create=False``: writes (retention) but creates nothing and fails when it is missing."""
    parsed = _Parsed(resolve_url(url))
    if parsed.scheme == "sqlite":
        from ownership_ctx.store import SQLiteStore

        if not parsed.path:
            raise ValueError("sqlite URL needs a path: sqlite:///relative.db or sqlite:////abs.db")
        return SQLiteStore(
            parsed.path, readonly=readonly, create=create, **parsed.options(_SQLITE_OPTIONS)
        )
    if parsed.scheme == "postgresql":
        from ownership_ctx.store import PostgresStore

        if importlib.util.find_spec("psycopg") is None:
            # Now, at install time, rather than as a failing write in the background later.
            raise ModuleNotFoundError(
                'PostgreSQL stores need psycopg: pip install "ownership-ctx[postgres]"',
                name="psycopg",
            )
        return PostgresStore(
            parsed.libpq_url(), readonly=readonly, create=create, **parsed.options(_PG_OPTIONS)
        )
    if parsed.scheme == "jsonl":
        from ownership_ctx.sinks.jsonl import JsonLinesSink

        return _EmitBackend(JsonLinesSink(parsed.path))
    if parsed.scheme == "otel":
        from ownership_ctx.sinks.otel_export import OtelLogExporter

        return OtelLogExporter()
    raise ValueError(
        f"unknown sink URL scheme {parsed.scheme!r}: use sqlite, postgresql, jsonl, memory or otel"
    )


def open_store(url: str, *, readonly: bool = False, create: bool = True) -> StoreBase:
    """The store at ``url`` (``sqlite:///...`` or ``postgresql://...``), for writing
    (``write_batch``) and reading (the typed query API, `ownership_ctx.store.EventQueries`).
    ``readonly``: never write or create anything; a missing store or table raises.
    ``create=False``: may write, never creates; a missing store or table raises."""
    from ownership_ctx.store import StoreBase

    backend = open_backend(url, readonly=readonly, create=create)
    if not isinstance(backend, StoreBase):
        raise ValueError(f"{url.split(':', 1)[0]}: sinks are write-only; no queries")
    return backend


def open_reader(url: str | None = None, *, readonly: bool = True) -> StoreBase:
    """The store at ``url`` (else ``OWNERSHIP_CTX_SINK_URL``, else `DEFAULT_URL`) that
    already exists, checked now: for reading only (``readonly``), or for writing without
    creating anything (retention). Raises `ownership_ctx.store.StoreError` (one line, saying
    what to do) when it cannot be opened."""
    from ownership_ctx.store import SQLiteStore, StoreError

    url = resolve_url(url)
    scheme = _Parsed(url).scheme
    if scheme not in ("sqlite", "postgresql"):
        raise StoreError(f"reports read sqlite:/// or postgresql:// stores, not {scheme}://")
    try:
        store = open_store(url, readonly=readonly, create=False)
    except ModuleNotFoundError:
        raise StoreError(
            'reading PostgreSQL needs psycopg: pip install "ownership-ctx[postgres]"'
        ) from None
    except ValueError as e:
        raise StoreError(str(e).strip().splitlines()[0]) from e
    if isinstance(store, SQLiteStore) and not os.path.isfile(store.path):
        raise StoreError(
            f"no event store at {os.path.abspath(store.path)}"
            " (pass --db URL or a path, or set OWNERSHIP_CTX_SINK_URL)"
        )
    try:
        store.extent()  # connects and checks the tables are there
    except StoreError as e:
        store.close()
        detail = str(e).partition(": ")[2] or str(e)
        where = (
            "" if isinstance(store, SQLiteStore) else f"cannot read the store {redacted_url(url)}: "
        )
        raise StoreError(where + detail) from e
    return store


def open_sink(url: str, **pipeline_options: Any) -> events.Sink:
    """A ready sink for ``url``: a `Pipeline` in front of the store (``memory://``: a plain
    `MemorySink`). Keyword arguments override the URL's pipeline parameters."""
    url = resolve_url(url)
    parsed = _Parsed(url)
    if parsed.scheme == "memory":
        from ownership_ctx.sinks.memory import MemorySink

        maxlen = parsed.params.get("maxlen")
        return MemorySink(int(maxlen) if maxlen else 100_000)
    backend: Backend = open_backend(url)
    options: dict[str, Any] = {"name": parsed.scheme, **parsed.options(_PIPELINE_OPTIONS)}
    if "spool_dir" not in pipeline_options:
        options["spool_dir"] = _spool_dir(parsed)  # created when first spooled to
    if "spool_max_mb" in parsed.params:
        options["spool_max_bytes"] = int(float(parsed.params["spool_max_mb"]) * (1 << 20))
    options.update(pipeline_options)
    return Pipeline(backend, **options)


def from_env(environ: Mapping[str, str] | None = None) -> events.Sink | None:
    """The sink ``OWNERSHIP_CTX_SINK_URL`` names, or None when it is unset or empty."""
    url = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    return open_sink(resolve_url(url)) if url else None


def install(url: str | None = None, **pipeline_options: Any) -> events.Sink:
    """Build the sink for ``url`` (else ``OWNERSHIP_CTX_SINK_URL``, else `DEFAULT_URL`) and
    make it the process-wide sink (a bare path means a SQLite file). A pipeline installed
    before is flushed and closed."""
    sink = open_sink(resolve_url(url), **pipeline_options)
    previous = events.set_sink(sink)
    if isinstance(previous, Pipeline) and previous is not sink:
        previous.close()
    return sink


class _EmitBackend:
    """A per-event sink (``emit``) used as a batch backend, off the caller's thread."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write_batch(self, events: list[Mapping[str, Any]]) -> None:
        emit = self.sink.emit
        for event in events:
            emit(event)

    def close(self) -> None:
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()


def redacted_url(url: str) -> str:
    """``url`` without its password: what messages and progress lines may show."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}@{host}"
    return url

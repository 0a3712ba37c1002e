"""Budgets from a TOML file (``tomllib``; the ``tomli`` backport on Python 3.10).

.. code-block:: toml

    [settings]                      # all optional
    backend = "redis://127.0.0.1:6379/0"   # default "memory" (this process only)
    prefix = "oc:budgets:"          # Redis key prefix
    fail = "open"                   # or "closed"
    refresh = 1.0                   # seconds the cached view may be stale
    edge = "enforce"                # or "observe"; same for queue and metering
    store = "sqlite:///ownership.db"   # rebuild counters from it after a restart

    [[budget]]
    name = "support-monthly"
    team = "support"                # any of team, workflow, feature, tenant
    period = "month"                # day, week or month (UTC)
    limit = "500.00"                # USD, hard
    soft = "400.00"                 # USD, warning (optional)
    webhook = "https://hooks.example.com/budget"   # optional

A file that cannot be used raises `BudgetConfigError` naming the file and line, at startup.
A raw ``tenant`` is hashed with ``OWNERSHIP_CTX_HASH_KEY`` (`Keys.from_env`), as at the edge.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from ..envelope import check_field
from ..hashing import ConfigurationError, Keys
from .engine import Budgets, SpendSource
from .model import Budget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["BudgetConfig", "BudgetConfigError", "load", "loads"]

#: Keys of a [[budget]] table -> envelope fields.
FIELD_KEYS: Final = {
    "team": "owner_team",
    "workflow": "workflow_id",
    "feature": "feature",
    "tenant": "tenant",
}
_BUDGET_KEYS: Final = frozenset({*FIELD_KEYS, "name", "period", "limit", "soft", "webhook", "each"})
_SETTINGS: Final = frozenset(
    {
        "backend",
        "prefix",
        "fail",
        "refresh",
        "edge",
        "queue",
        "metering",
        "store",
        "default_max_tokens",
        "reservation_ttl",
    }
)
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
_LINE: Final = re.compile(r"\(at line (\d+), column \d+\)")


class BudgetConfigError(ValueError):
    """A budget file that cannot be used: ``path:line: what is wrong``."""


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    budgets: tuple[Budget, ...]
    settings: Mapping[str, Any]
    path: str = "<budgets>"

    def build(self, source: SpendSource | None = None) -> Budgets:
        """The `Budgets` this file describes, with their counter backend. ``source`` (the
        event store) overrides the file's ``store``."""
        settings = dict(self.settings)
        backend = settings.pop("backend", "memory")
        prefix = settings.pop("prefix", "oc:budgets:")
        store = settings.pop("store", None)
        if backend == "memory":
            from .counters import MemoryCounters

            counters: Any = MemoryCounters()
        else:
            from .redis_counters import RedisCounters

            counters = RedisCounters(backend, prefix=prefix)
        if source is None and store is not None:
            from .rebuild import StoreSpend

            source = StoreSpend.open(store)
        return Budgets(self.budgets, counters, source=source, **settings)


def load(path: str | Path, *, keys: Keys | None = None) -> BudgetConfig:
    """Read a budget file. Raises `BudgetConfigError` (with the line) when it is unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise BudgetConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise BudgetConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return loads(text, path=str(path), keys=keys)


def loads(text: str, *, path: str = "<budgets>", keys: Keys | None = None) -> BudgetConfig:
    """`load` from the text of a file (``path`` only names it in errors)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = _LINE.search(message)
        line = found.group(1) if found else "?"
        raise BudgetConfigError(
            f"{path}:{line}: not valid TOML: {_LINE.sub('', message).strip()}"
        ) from None
    locate = _Locator(text, path)
    unknown = sorted(set(document) - {"settings", "budget"})
    if unknown:
        raise locate.error(None, unknown[0], f"unknown table {unknown[0]!r} (settings, budget)")
    settings = document.get("settings", {})
    if not isinstance(settings, dict):
        raise locate.error(None, "settings", "settings must be a table: [settings]")
    for key, value in settings.items():
        if key not in _SETTINGS:
            raise locate.error(None, key, f"unknown setting {key!r}")
        if key in ("refresh", "reservation_ttl") and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0
        ):
            raise locate.error(None, key, f"{key} must be a number of seconds > 0")
        if key == "default_max_tokens" and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise locate.error(None, key, "default_max_tokens must be a whole number >= 1")
        if key in ("edge", "queue", "metering") and value not in ("enforce", "observe"):
            raise locate.error(None, key, f'{key} must be "enforce" or "observe"')
        if key == "fail" and value not in ("open", "closed"):
            raise locate.error(None, key, 'fail must be "open" or "closed"')
        if key in ("prefix", "store") and (not isinstance(value, str) or not value.strip()):
            raise locate.error(None, key, f"{key} must be a non-empty string")
        if key == "backend" and (
            not isinstance(value, str)
            or (value != "memory" and not value.startswith(_REDIS_SCHEMES))
        ):
            raise locate.error(
                None, key, 'backend must be "memory" or a redis://, rediss:// or unix:// URL'
            )
    tables = document.get("budget", [])
    if not isinstance(tables, list):
        raise locate.error(None, "budget", "budgets are an array of tables: [[budget]]")
    budgets: list[Budget] = []
    names: set[str] = set()
    for index, table in enumerate(tables):
        budget = _budget(table, index, locate, keys)
        if budget.name in names:
            raise locate.error(index, "name", f"budget name {budget.name!r} is used twice")
        names.add(budget.name)
        budgets.append(budget)
    return BudgetConfig(tuple(budgets), settings, path)


def _budget(table: dict[str, Any], index: int, locate: _Locator, keys: Keys | None) -> Budget:
    for key in table:
        if key not in _BUDGET_KEYS:
            raise locate.error(
                index, key, f"unknown key {key!r} (known: {', '.join(sorted(_BUDGET_KEYS))})"
            )
    name = table.get("name")
    if not isinstance(name, str):
        raise locate.error(index, None, "every [[budget]] needs a name")
    for required in ("limit",):
        if required not in table:
            raise locate.error(index, None, f"budget {name!r} has no {required}")
    match: dict[str, str] = {}
    for key, field in FIELD_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, str):
            raise locate.error(index, key, f"budget {name!r}: {key} must be text")
        if field == "tenant" and check_field("tenant", value) is not None:
            try:
                value = (keys or Keys.from_env()).hash(value)
            except ConfigurationError as error:
                raise locate.error(index, key, f"budget {name!r}: raw tenant: {error}") from None
        match[field] = value
    each = table.get("each", [])
    if isinstance(each, str):
        each = [each]
    if not isinstance(each, list) or not all(e in FIELD_KEYS for e in each):
        raise locate.error(
            index, "each", f"budget {name!r}: each lists fields of {', '.join(FIELD_KEYS)}"
        )
    try:
        return Budget(
            name=name,
            limit=_amount(table["limit"], "limit", name, index, locate),
            period=table.get("period", "month"),
            match=match,
            each=tuple(FIELD_KEYS[e] for e in each),
            soft=None
            if "soft" not in table
            else _amount(table["soft"], "soft", name, index, locate),
            webhook=table.get("webhook"),
        )
    except BudgetConfigError:
        raise
    except ValueError as error:
        raise locate.error(index, _blame(str(error)), str(error)) from None


def _amount(value: object, key: str, name: str, index: int, locate: _Locator) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise locate.error(index, key, f"budget {name!r}: {key} must be an amount in USD")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise locate.error(index, key, f"budget {name!r}: {key} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise locate.error(index, key, f"budget {name!r}: {key} must be finite and >= 0")
    return amount


def _blame(message: str) -> str | None:
    for key in ("period", "soft", "limit", "webhook", "name", "each", *FIELD_KEYS.values()):
        if f": {key}" in message or f" {key} " in message:
            return {v: k for k, v in FIELD_KEYS.items()}.get(key, key)
    return None


class _Locator:
    """Finds the line of a key: TOML parsers give positions only for syntax errors."""

    def __init__(self, text: str, path: str) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.starts = [
            number
            for number, line in enumerate(self.lines, start=1)
            if re.match(r"\s*\[\[\s*budget\s*\]\]", line)
        ]

    def line(self, index: int | None, key: str | None) -> int:
        if index is None:
            first, last = 1, len(self.lines)
            settings = next(
                (n for n, ln in enumerate(self.lines, 1) if re.match(r"\s*\[\s*settings", ln)),
                None,
            )
            if settings is not None:
                first = settings
        else:
            first = self.starts[index] if index < len(self.starts) else 1
            last = self.starts[index + 1] - 1 if index + 1 < len(self.starts) else len(self.lines)
        if key is not None:
            pattern = re.compile(rf"\s*\[?\[?\s*{re.escape(key)}\s*[=\]]")
            for number in range(first, last + 1):
                if pattern.match(self.lines[number - 1]):
                    return number
        return first

    def error(self, index: int | None, key: str | None, message: str) -> BudgetConfigError:
        return BudgetConfigError(f"{self.path}:{self.line(index, key)}: {message}")

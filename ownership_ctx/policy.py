"""Policy: which fields a unit of work must carry, what happens when they are missing, and
which incoming envelopes are believed.

A *unit* is what a hop runs: an HTTP path, a Celery task name, a Dramatiq actor name. `Rule`
patterns are `fnmatch` globs over unit names; the first rule that matches decides, the policy's
own settings apply to every unit no rule matches.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from .envelope import OWNERSHIP_FIELDS, Problem, check_extra, check_field

__all__ = [
    "EdgeHeaders",
    "Inbound",
    "Mode",
    "Policy",
    "Resolver",
    "Rule",
    "Trust",
    "UnitPolicy",
]

#: ``enforce``: refuse the unit (HTTP 400, task refused) when required fields are missing or
#: invalid. ``quarantine``: run it, marked ``quarantined``. ``stamp``: fill missing fields from
#: the defaults, then quarantine whatever is still missing.
Mode = Literal["enforce", "quarantine", "stamp"]
#: Which incoming envelopes are believed: ``all`` (any valid one; with signing keys configured,
#: only signed ones unless `Policy.accept_unsigned`; a signature must verify), ``signed`` (only
#: validly signed ones: for services that take calls from both internal callers and the
#: internet), ``none`` (ownership comes only from the resolver and the defaults).
Trust = Literal["all", "signed", "none"]

_MODES: Final = ("enforce", "quarantine", "stamp")
_TRUSTS: Final = ("all", "signed", "none")
_UNIT_CACHE_SIZE: Final = 4096
_FLAGS: Final = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclasses.dataclass(frozen=True, slots=True)
class Inbound:
    """What a resolver is told about an incoming unit of work."""

    carrier: Mapping[str, str]
    hop: str
    unit: str  # its name: for HTTP the route or redacted path, never raw ids (see ``native``)
    native: object = None  # the framework's own object: ASGI scope, WSGI environ, task request


#: Derives ownership from the authenticated principal (e.g. API key -> team). Returns envelope
#: field values (raw tenant / user ids are hashed at the edge) or ``None``. What it returns wins
#: over what the caller sent: the principal is better evidence than a header.
Resolver = Callable[[Inbound], Mapping[str, str] | None]


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeHeaders:
    """First-party convenience headers accepted at the edge (never forwarded as such).

    ``tenant`` and ``user`` carry raw ids that the edge hashes, so they are off unless named
    (e.g. ``EdgeHeaders(tenant="x-tenant-id", user="x-user-id")``) and then need a hash key at
    startup. Set a name to ``None`` to refuse that header.
    """

    owner_team: str | None = "x-owner-team"
    workflow_id: str | None = "x-workflow-id"
    feature: str | None = "x-feature"
    tenant: str | None = None
    user: str | None = None

    def items(self) -> tuple[tuple[str, str], ...]:
        """``(field, lowercased header name)`` for every enabled header."""
        return tuple(
            (name, header.lower())
            for name in OWNERSHIP_FIELDS
            if (header := getattr(self, name)) is not None
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UnitPolicy:
    """The policy that applies to one unit, rules resolved."""

    mode: Mode
    required: tuple[str, ...]
    defaults: Mapping[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """Settings for the units whose name matches ``pattern`` (an `fnmatch` glob).

    Unset settings (``None``) fall back to the policy's; ``defaults`` are merged over the
    policy's defaults.
    """

    pattern: str
    required: tuple[str, ...] | None = None
    mode: Mode | None = None
    defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _check_values(where: str, values: Mapping[str, str]) -> None:
    for name, value in values.items():
        if name.startswith("extra."):
            problem: Problem | None = check_extra(name[6:], value)
        elif name in OWNERSHIP_FIELDS:
            problem = check_field(name, value)
        else:
            raise ValueError(f"{where}: {name!r} is not an envelope field")
        if problem is not None:
            raise ValueError(f"{where}: {problem}")


def _check_required(where: str, required: tuple[str, ...]) -> None:
    for name in required:
        if name not in OWNERSHIP_FIELDS:
            raise ValueError(f"{where}: {name!r} is not an ownership field {OWNERSHIP_FIELDS}")


@dataclasses.dataclass(frozen=True)
class Policy:
    """What every unit of work must carry, and what to do when it does not.

    Defaults are values of envelope fields (``tenant`` / ``user`` in hashed form) or
    ``extra.<key>`` for extras. ``extra_keys`` declares which extra fields are accepted from
    the wire. ``edge_headers`` names the first-party headers accepted at the edge (``None``:
    accept none).

    ``accept_unsigned``: with signing keys configured, envelopes that carry no signature are
    not believed (on queues and on HTTP alike), since anyone who can publish could name any
    team; set it to believe them too, while publishers are being given the keys. It changes
    nothing without signing keys (nothing to verify with), nor for ``trust="signed"``.
    """

    mode: Mode = "enforce"
    required: tuple[str, ...] = ("owner_team", "workflow_id", "feature")
    defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    trust: Trust = "all"
    resolver: Resolver | None = None
    extra_keys: tuple[str, ...] = ()
    edge_headers: EdgeHeaders | None = EdgeHeaders()
    accept_unsigned: bool = False
    _units: dict[str, UnitPolicy] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _patterns: tuple[tuple[re.Pattern[str], UnitPolicy], ...] = dataclasses.field(
        default=(), init=False, repr=False, compare=False
    )
    _default: UnitPolicy | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {self.mode!r}")
        if self.trust not in _TRUSTS:
            raise ValueError(f"trust must be one of {_TRUSTS}, not {self.trust!r}")
        object.__setattr__(self, "required", tuple(self.required))
        _check_required("Policy.required", self.required)
        _check_values("Policy.defaults", self.defaults)
        for key in self.extra_keys:
            if check_extra(key, "x") is not None:
                raise ValueError(f"extra key {key!r} must be 1-32 of [a-z0-9_], starting a-z")
        patterns = []
        for rule in self.rules:
            if rule.mode is not None and rule.mode not in _MODES:
                raise ValueError(f"rule {rule.pattern!r}: mode must be one of {_MODES}")
            required = self.required if rule.required is None else tuple(rule.required)
            _check_required(f"rule {rule.pattern!r}", required)
            _check_values(f"rule {rule.pattern!r} defaults", rule.defaults)
            unit = UnitPolicy(
                mode=rule.mode or self.mode,
                required=required,
                defaults={**self.defaults, **rule.defaults},
            )
            patterns.append((re.compile(fnmatch.translate(rule.pattern)), unit))
        object.__setattr__(self, "_patterns", tuple(patterns))
        default = UnitPolicy(mode=self.mode, required=self.required, defaults=self.defaults)
        object.__setattr__(self, "_default", default)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        """A policy from ``OWNERSHIP_CTX_MODE``, ``OWNERSHIP_CTX_REQUIRED`` (comma-separated
        field names; empty for none), ``OWNERSHIP_CTX_TRUST`` and
        ``OWNERSHIP_CTX_ACCEPT_UNSIGNED`` (``1`` / ``true``): for integrations enabled without
        code, such as ``opentelemetry-instrument``.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        if "OWNERSHIP_CTX_MODE" in env:
            kwargs["mode"] = env["OWNERSHIP_CTX_MODE"].strip()
        if "OWNERSHIP_CTX_REQUIRED" in env:
            names = env["OWNERSHIP_CTX_REQUIRED"].split(",")
            kwargs["required"] = tuple(n.strip() for n in names if n.strip())
        if "OWNERSHIP_CTX_TRUST" in env:
            kwargs["trust"] = env["OWNERSHIP_CTX_TRUST"].strip()
        if "OWNERSHIP_CTX_ACCEPT_UNSIGNED" in env:
            flag = env["OWNERSHIP_CTX_ACCEPT_UNSIGNED"].strip().lower()
            if flag not in _FLAGS:
                raise ValueError(f"OWNERSHIP_CTX_ACCEPT_UNSIGNED must be one of {sorted(_FLAGS)}")
            kwargs["accept_unsigned"] = _FLAGS[flag]
        return cls(**kwargs)

    def for_unit(self, unit: str) -> UnitPolicy:
        """The settings that apply to ``unit`` (cached; bounded for unbounded path spaces).

        Units with the same settings get the same `UnitPolicy` object.
        """
        resolved = self._units.get(unit)
        if resolved is None:
            resolved = self._resolve(unit)
            if len(self._units) >= _UNIT_CACHE_SIZE:
                self._units.clear()
            self._units[unit] = resolved
        return resolved

    def _resolve(self, unit: str) -> UnitPolicy:
        for pattern, resolved in self._patterns:
            if pattern.match(unit):
                return resolved
        assert self._default is not None
        return self._default

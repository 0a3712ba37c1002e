"""The ownership envelope: who owns a unit of work, as one immutable value.

Standard library only. Field rules are the contract of DESIGN.md; they are checked when an
envelope is built, so an `Envelope` that exists is always valid.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, cast, final

__all__ = [
    "ATTRIBUTIONS",
    "FIELDS",
    "FORMAT_VERSION",
    "HASHED_FIELDS",
    "Attribution",
    "Envelope",
    "InvalidEnvelope",
    "Problem",
    "check_field",
    "check_extra",
]

FORMAT_VERSION: Final = 1

#: The ownership fields, in wire order. ``trace_id`` is always present on an envelope.
FIELDS: Final = ("trace_id", "owner_team", "workflow_id", "feature", "tenant", "user")
OWNERSHIP_FIELDS: Final = FIELDS[1:]
HASHED_FIELDS: Final = frozenset({"tenant", "user"})
MAX_EXTRAS: Final = 8

#: How well a unit of work is attributed, from best to worst. When two hops disagree the worse
#: one wins: spend that started quarantined stays quarantined downstream.
Attribution = Literal["attributed", "stamped", "quarantined", "unattributed"]
ATTRIBUTIONS: Final[tuple[Attribution, ...]] = (
    "attributed",
    "stamped",
    "quarantined",
    "unattributed",
)

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_HASHED = re.compile(r"h1:[0-9a-f]{32}")
_EXTRA_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TOKEN_CHARS = r"[A-Za-z0-9._:/-]"
_RULES: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "trace_id": (_TRACE_ID, "32 lowercase hex characters, not all zero"),
    "owner_team": (re.compile(_TOKEN_CHARS + "{1,64}"), "1-64 characters of [A-Za-z0-9._:/-]"),
    "workflow_id": (
        re.compile(_TOKEN_CHARS + "{1,128}"),
        "1-128 characters of [A-Za-z0-9._:/-]",
    ),
    "feature": (re.compile(_TOKEN_CHARS + "{1,64}"), "1-64 characters of [A-Za-z0-9._:/-]"),
    "tenant": (_HASHED, "a keyed hash ('h1:' and 32 hex characters), never a raw id"),
    "user": (_HASHED, "a keyed hash ('h1:' and 32 hex characters), never a raw id"),
}
_EXTRA_VALUE = re.compile(_TOKEN_CHARS + "{1,128}")
_ZERO_TRACE: Final = "0" * 32


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """Why (part of) an incoming envelope was not accepted.

    ``detail`` describes the rule that failed; it never contains the offending value, so a
    problem can be logged or returned to a client without echoing hostile input.
    ``severity`` is ``"invalid"`` for input that is wrong, ``"ignored"`` for input that was
    dropped on purpose (for example an unsigned envelope when only signed ones are trusted).
    """

    code: str
    field: str | None
    detail: str
    severity: Literal["invalid", "ignored"] = "invalid"

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{where}{self.code} ({self.detail})"


class InvalidEnvelope(ValueError):
    """Raised when an `Envelope` is built from values that break the field rules."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def check_field(name: str, value: str) -> Problem | None:
    """Check one field value against the contract; ``None`` when it is valid."""
    rule = _RULES.get(name)
    if rule is None:
        return Problem("unknown_field", None, "not an envelope field")
    pattern, description = rule
    if pattern.fullmatch(value) is None or (name == "trace_id" and value == _ZERO_TRACE):
        code = "raw_identifier" if name in HASHED_FIELDS else "invalid"
        return Problem(code, name, f"must be {description}")
    return None


def check_extra(key: str, value: str) -> Problem | None:
    """Check one operator-declared extra field (e.g. ``cost_center``)."""
    if _EXTRA_KEY.fullmatch(key) is None:
        return Problem("invalid", "extra", "extra keys are 1-32 of [a-z0-9_], starting a-z")
    if _EXTRA_VALUE.fullmatch(value) is None:
        return Problem("invalid", f"extra.{key}", "must be 1-128 characters of [A-Za-z0-9._:/-]")
    return None


_ARGUMENTS: Final = (*FIELDS, "extras", "attribution", "version")
_SLOTS: Final = (*_ARGUMENTS, "_hash")


@final
class Envelope:
    """Who owns a unit of work. Immutable: `replace` makes a changed copy.

    ``tenant`` and ``user`` hold keyed hashes only (see `ownership_ctx.hashing`); raw customer
    or user ids never enter an envelope. ``extras`` holds operator-declared extra fields as
    sorted ``(key, value)`` pairs; pass a mapping and it is normalized. Building one checks
    every rule and raises `InvalidEnvelope` listing what is wrong, and so does every way to
    copy one (`replace`, `copy`, `pickle`): an `Envelope` that exists is valid.

    A slotted class rather than a tuple: a tuple's own constructors (``_make``, ``_replace``,
    ``tuple.__new__``) would build one without the checks.
    """

    __slots__ = _SLOTS
    trace_id: str
    owner_team: str | None
    workflow_id: str | None
    feature: str | None
    tenant: str | None
    user: str | None
    extras: tuple[tuple[str, str], ...]
    attribution: Attribution
    version: int
    _hash: int | None

    def __new__(
        cls,
        trace_id: str,
        owner_team: str | None = None,
        workflow_id: str | None = None,
        feature: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        extras: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        attribution: Attribution = "attributed",
        version: int = FORMAT_VERSION,
    ) -> Envelope:
        try:
            items = extras.items() if isinstance(extras, Mapping) else extras
            pairs = tuple(sorted((str(k), str(v)) for k, v in items))
        except (TypeError, ValueError):
            raise InvalidEnvelope(
                [Problem("invalid", "extra", "extras are (key, value) pairs or a mapping")]
            ) from None
        values = (trace_id, owner_team, workflow_id, feature, tenant, user)
        problems = []
        for name, value in zip(FIELDS, values, strict=True):
            if value is None and name != "trace_id":
                continue
            if not isinstance(value, str):
                problems.append(Problem("invalid", name, "must be a string"))
                continue
            problem = check_field(name, value)
            if problem is not None:
                problems.append(problem)
        if len(pairs) > MAX_EXTRAS:
            problems.append(Problem("invalid", "extra", f"at most {MAX_EXTRAS} extra fields"))
        for key, value in pairs:
            problem = check_extra(key, value)
            if problem is not None:
                problems.append(problem)
        if len({key for key, _ in pairs}) != len(pairs):
            problems.append(Problem("invalid", "extra", "each extra key at most once"))
        if attribution not in ATTRIBUTIONS:
            problems.append(Problem("invalid", "attribution", f"must be one of {ATTRIBUTIONS}"))
        if version != FORMAT_VERSION or type(version) is not int:
            problems.append(Problem("unsupported_version", "version", f"must be {FORMAT_VERSION}"))
        if problems:
            raise InvalidEnvelope(problems)
        return _build(trace_id, owner_team, workflow_id, feature, tenant, user, pairs, attribution)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass could override the checks (or add a constructor without them).
        raise TypeError("Envelope cannot be subclassed")

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: use replace()")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[Envelope], tuple[Any, ...]]:
        # pickle and copy rebuild through the checked constructor.
        return (Envelope, self._arguments())

    def __copy__(self) -> Envelope:
        return self  # immutable

    def __deepcopy__(self, memo: Any) -> Envelope:
        return self  # immutable, and every part of it is immutable too

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Envelope:
            return NotImplemented
        return self is other or self._arguments() == other._arguments()

    def __hash__(self) -> int:
        # Envelopes key the encoder's cache: hash once, not on every outbound call.
        cached = self._hash
        if cached is None:
            cached = hash(self._arguments())
            object.__setattr__(self, "_hash", cached)
        return cached

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.as_kwargs().items())
        return f"Envelope({shown})"

    def _arguments(self) -> tuple[Any, ...]:
        return (
            self.trace_id,
            self.owner_team,
            self.workflow_id,
            self.feature,
            self.tenant,
            self.user,
            self.extras,
            self.attribution,
            self.version,
        )

    def as_kwargs(self) -> dict[str, Any]:
        """The constructor's arguments: ``Envelope(**e.as_kwargs()) == e``."""
        return dict(zip(_ARGUMENTS, self._arguments(), strict=True))

    def replace(self, **changes: Any) -> Envelope:
        """A copy with some fields changed (validated like a new envelope)."""
        return Envelope(**{**self.as_kwargs(), **changes})

    # The NamedTuple spellings, for code written when Envelope was one; both are checked.
    _replace = replace
    _asdict = as_kwargs

    def __replace__(self, **changes: Any) -> Envelope:  # copy.replace (Python 3.13+)
        return self.replace(**changes)

    def missing(self, required: Iterable[str]) -> tuple[str, ...]:
        """The names in ``required`` that this envelope has no value for."""
        return tuple(name for name in required if getattr(self, name, None) is None)

    def extra(self, key: str) -> str | None:
        """The value of one extra field, or ``None``."""
        for k, v in self.extras:
            if k == key:
                return v
        return None

    def as_dict(self) -> dict[str, str]:
        """The fields that have values, flat, with extras as ``extra.<key>`` (for logs, events)."""
        out = {"trace_id": self.trace_id}
        for name in OWNERSHIP_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for key, value in self.extras:
            out["extra." + key] = value
        out["attribution"] = self.attribution
        return out


class _Draft:
    """An `Envelope` under construction: the same slots, writable.

    Filling a draft and then turning it into an `Envelope` (``__class__`` assignment, allowed
    between classes of the same slot layout) is the cheapest way to build a frozen instance,
    cheaper than a tuple; envelopes are built on every request.
    """

    __slots__ = _SLOTS
    trace_id: str
    owner_team: str | None
    workflow_id: str | None
    feature: str | None
    tenant: str | None
    user: str | None
    extras: tuple[tuple[str, str], ...]
    attribution: Attribution
    version: int
    _hash: int | None


_new = object.__new__


def _build(
    trace_id: str,
    owner_team: str | None,
    workflow_id: str | None,
    feature: str | None,
    tenant: str | None,
    user: str | None,
    extras: tuple[tuple[str, str], ...],
    attribution: Attribution,
) -> Envelope:
    draft = _new(_Draft)
    draft.trace_id = trace_id
    draft.owner_team = owner_team
    draft.workflow_id = workflow_id
    draft.feature = feature
    draft.tenant = tenant
    draft.user = user
    draft.extras = extras
    draft.attribution = attribution
    draft.version = FORMAT_VERSION
    draft._hash = None
    draft.__class__ = Envelope  # type: ignore[assignment]
    return cast(Envelope, draft)


def with_checked_trace_id(template: Envelope, trace_id: str) -> Envelope:
    """``template`` with another trace id, which the caller has already checked (the gate's
    per-request copy of a cached decision). `_build` written out: one call less per request.

    For the core only, like `assemble_checked`."""
    draft = _new(_Draft)
    draft.trace_id = trace_id
    draft.owner_team = template.owner_team
    draft.workflow_id = template.workflow_id
    draft.feature = template.feature
    draft.tenant = template.tenant
    draft.user = template.user
    draft.extras = template.extras
    draft.attribution = template.attribution
    draft.version = FORMAT_VERSION
    draft._hash = None
    draft.__class__ = Envelope  # type: ignore[assignment]
    return cast(Envelope, draft)


def assemble_checked(
    trace_id: str,
    fields: Mapping[str, str],
    extras: tuple[tuple[str, str], ...],
    attribution: Attribution,
) -> Envelope:
    """Build an envelope from values the caller has already checked (the gate, the codec).

    Skips the checks of `Envelope.__new__`, which cost more than the rest of a request's path.
    Only the core calls it, with values that passed `check_field` / `check_extra`.
    """
    get = fields.get
    return _build(
        trace_id,
        get("owner_team"),
        get("workflow_id"),
        get("feature"),
        get("tenant"),
        get("user"),
        extras,
        attribution,
    )

"""The wire format: envelope <-> carrier.

On HTTP the envelope travels as W3C ``baggage`` entries under one namespace::

    baggage: ownership.v=1,ownership.trace_id=4bf9...,ownership.owner_team=search,sentry-env=prod

Other systems' entries are kept as they are; ours replace any earlier ``ownership.*`` entries.
Queue messages carry the same text (ownership entries only) in one header, `QUEUE_HEADER`.

Parsing never raises: it returns what it could read plus a list of `Problem`. It follows the
W3C baggage grammar (optional whitespace is only space and tab; a member with an invalid
property is invalid) and the limits OpenTelemetry enforces (a header over 8192 bytes is dropped
whole, entries over 4096 bytes or past the 180th are skipped), so that what OpenTelemetry
rejects, we reject too.

Writing, ours always fit: when the merged header would pass 8192 bytes or 180 members, whole
foreign members are dropped (never a partial one), each drop counted in `events.stats` and
logged once per reason.

A signed envelope is believed only when every one of its ownership entries is valid: the
signature covers the envelope's canonical form (`hashing.signed_text`), never the raw text.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Final
from urllib.parse import unquote

from . import events
from .envelope import (
    ATTRIBUTIONS,
    FIELDS,
    FORMAT_VERSION,
    MAX_EXTRAS,
    Attribution,
    Envelope,
    Problem,
    assemble_checked,
    check_extra,
    check_field,
)
from .hashing import SIGNATURE_VERSION, Keys, signed_text_around, value_text
from .ids import new_id

__all__ = [
    "BAGGAGE_HEADER",
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_ENTRIES",
    "MAX_ENTRY_BYTES",
    "PREFIX",
    "QUEUE_HEADER",
    "TRACEPARENT_HEADER",
    "TRACE_ENTRY",
    "Parsed",
    "decode",
    "decode_header",
    "encode",
    "encode_header",
    "merge_baggage",
    "new_trace_id",
    "parse",
    "put_baggage",
    "signature_problem",
    "split_trace_id",
    "split_volatile",
    "trace_id_from_traceparent",
    "unattributed_encoder",
    "verifies_volatile",
]

PREFIX: Final = "ownership."
BAGGAGE_HEADER: Final = "baggage"
TRACEPARENT_HEADER: Final = "traceparent"
#: The one message header (Celery) / option key (Dramatiq) that carries the envelope.
QUEUE_HEADER: Final = "ownership_envelope"
MAX_BAGGAGE_BYTES: Final = 8192
MAX_BAGGAGE_ENTRIES: Final = 180
MAX_ENTRY_BYTES: Final = 4096

logger = logging.getLogger("ownership_ctx")

_FIELD_SET: Final = frozenset(FIELDS)
_OWS: Final = " \t"  # W3C optional whitespace: nothing else (no VT, FF, NBSP, NEL, ...)
# The W3C baggage grammar, as OpenTelemetry's propagator checks it (opentelemetry.util.re).
_W3C_KEY = r"[!#-'*+\-.0-9A-Z^-z|~]+"
_W3C_VALUE = r"[!#-+\--:<-\[\]-~]*"
_W3C_PROPERTY = rf"[ \t]*{_W3C_KEY}[ \t]*(?:=[ \t]*{_W3C_VALUE}[ \t]*)?"
# One of our members, whitespace around it already stripped: (name, value); W3C properties,
# when valid, carry nothing for us.
_MEMBER = re.compile(
    rf"ownership\.({_W3C_KEY[:-1]}*)[ \t]*=[ \t]*({_W3C_VALUE})[ \t]*(?:;{_W3C_PROPERTY})*"
)
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
#: ``traceparent`` in the form nearly every request has (version 00, non-zero ids): its
#: ``group(1)`` is the trace id. Whatever does not match goes to `trace_id_from_traceparent`.
common_traceparent = re.compile(
    r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
).fullmatch
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """What one carrier text said about ownership. Shared from a cache: do not mutate.

    ``fields`` holds the entries that passed the field rules, by envelope field name;
    ``problems`` says what else was there. A signature is checked (`signature_problem`) only
    when there are no problems: it covers the envelope these fields make, nothing else.
    """

    present: bool = False
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extras: tuple[tuple[str, str], ...] = ()
    attribution: Attribution = "attributed"
    signature: str | None = None
    problems: tuple[Problem, ...] = ()


_EMPTY = Parsed()


def new_trace_id() -> str:
    """A fresh W3C trace id (32 hex, never all zero): random bytes drawn in batches (an
    enqueue with nothing bound mints an id per message)."""
    return new_id()


def trace_id_from_traceparent(value: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` value, else ``None``."""
    if not value:
        return None
    match = _TRACEPARENT_00.fullmatch(value)  # the common case, in one step
    if match is not None:
        trace_id = match.group(1)
        return None if trace_id == "0" * 32 else trace_id
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32:
        return None
    if parent_id == "0" * 16:
        return None
    return trace_id


#: How the trace id entry of an encoded envelope starts: text without it carries no trace id.
TRACE_ENTRY: Final = PREFIX + "trace_id="
_SIGNATURE_ENTRY: Final = PREFIX + "sig="
_SIGNATURE_VALUE = re.compile(SIGNATURE_VERSION + r":[0-9a-f]{32}")
_TRACE_KEY: Final = PREFIX + "trace_id"
_SIGNATURE_KEY: Final = PREFIX + "sig"
# A version entry other than a plain ``v=1``: the parser then drops the whole envelope.
_ODD_VERSION = re.compile(r"(?:^|,)\s*ownership\.v\s*=(?!1(?:,|$))")
# Within this many characters a header is under every W3C byte limit, whatever it holds.
_SPLIT_MAX_CHARS: Final = 2048


def split_volatile(text: str) -> tuple[str | None, str | None, str]:
    """``(trace_id, signature, rest)``: the two entries that change on every request cut out
    of ``text``, when it holds exactly one plain, valid ``ownership.trace_id`` entry and at
    most one plain ``ownership.sig`` entry; else ``(None, None, text)``.

    Lets callers cache what the rest of an envelope means: the rest repeats across requests,
    the trace id and its signature never do. Anything unusual (a duplicate, odd spacing, a
    malformed signature, the W3C limits near) is left in place for the full parser to judge.
    """
    if TRACE_ENTRY not in text:
        return None, None, text  # the common edge case: the trace id comes from traceparent
    if len(text) > _SPLIT_MAX_CHARS or text.count(",") >= MAX_BAGGAGE_ENTRIES - 1:
        # Near the W3C limits the header may be dropped whole, or entries past the 180th
        # skipped: cutting an entry out would change that verdict.
        return None, None, text
    trace_id, rest = _cut(text, TRACE_ENTRY, _TRACE_ID)
    if trace_id is None or trace_id == "0" * 32:
        return None, None, text
    signature, without_signature = _cut(rest, _SIGNATURE_ENTRY, _SIGNATURE_VALUE)
    if signature is not None:
        rest = without_signature
    # Keys are matched without their '=': W3C allows whitespace before it, so
    # "ownership.trace_id =..." is a second trace id (a duplicate), "ownership.sig =..." a
    # signature. And the rest must still hold an ownership entry, or it would read as none.
    if (
        _TRACE_KEY in rest
        or _SIGNATURE_KEY in rest
        or PREFIX not in rest
        or _ODD_VERSION.search(rest)
    ):
        return None, None, text
    return trace_id, signature, rest


def _cut(text: str, entry: str, value: re.Pattern[str]) -> tuple[str | None, str]:
    """The value of the one member ``entry<value>`` and ``text`` without it, if it is plain."""
    start = text.find(entry)
    if start < 0 or (start > 0 and text[start - 1] != ","):
        return None, text
    begin = start + len(entry)
    end = text.find(",", begin)
    end = len(text) if end < 0 else end
    found = text[begin:end]
    if value.fullmatch(found) is None:
        return None, text
    rest = text[:start] + text[end + 1 :] if end < len(text) else text[: max(start - 1, 0)]
    return found, rest


def split_trace_id(text: str) -> tuple[str | None, str]:
    """`split_volatile` for unsigned text: ``(trace_id, rest)`` or ``(None, text)``."""
    trace_id, signature, rest = split_volatile(text)
    if trace_id is None or signature is not None:
        return None, text
    return trace_id, rest


def parse(text: str) -> Parsed:
    """Read the ownership entries of a baggage (or queue header) value. Never raises."""
    if PREFIX not in text:
        return _EMPTY
    if len(text) <= 2048:
        return _parse_cached(text)
    return _parse(text)


def _parse(text: str) -> Parsed:
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BAGGAGE_BYTES:
        return Parsed(
            present=True,
            problems=(Problem("oversized", None, f"header over {MAX_BAGGAGE_BYTES} bytes"),),
        )
    problems: list[Problem] = []
    members = text.split(",")
    if len(members) > MAX_BAGGAGE_ENTRIES:
        if any(m.strip(_OWS).startswith(PREFIX) for m in members[MAX_BAGGAGE_ENTRIES:]):
            problems.append(
                Problem("too_many_entries", None, f"entries past the {MAX_BAGGAGE_ENTRIES}th")
            )
        members = members[:MAX_BAGGAGE_ENTRIES]

    received: dict[str, str] = {}
    duplicated: set[str] = set()
    signed = False  # a signature entry was there, readable or not
    for raw in members:
        member = raw.strip(_OWS)
        if not member.startswith(PREFIX):
            continue
        # With its whitespace: OpenTelemetry counts some of it in an entry's length.
        match = _MEMBER.fullmatch(member) if len(raw) <= MAX_ENTRY_BYTES else None
        if match is None:
            name = member.partition("=")[0].rstrip(_OWS)[len(PREFIX) :]
            signed = signed or name.strip() == "sig"  # odd whitespace: still meant as one
            problems.append(_unreadable(raw, member, name))
            continue
        name, value = match.group(1, 2)
        if name == "sig":
            signed = True
        if "%" in value:
            try:
                value = unquote(value, errors="strict")
            except UnicodeDecodeError:
                problems.append(Problem("malformed", _field_name(name), "invalid percent-encoding"))
                continue
        if name in received or name in duplicated:
            duplicated.add(name)
            received.pop(name, None)
            continue
        received[name] = value
    for key in sorted(duplicated):
        # Two values for one field: either could be the smuggled one, so neither is used.
        problems.append(Problem("duplicate", _field_name(key), "entry appears more than once"))
    if not received and not problems:
        return _EMPTY  # "ownership." only appeared inside someone else's value

    signature = received.pop("sig", None)
    if signature is None and signed:
        signature = ""  # there, but unreadable or duplicated: a signature that cannot verify
    version = received.pop("v", None)
    if version is not None and version != str(FORMAT_VERSION):
        problems.append(
            Problem("unsupported_version", "version", f"only format version {FORMAT_VERSION}")
        )
        return Parsed(present=True, signature=signature, problems=tuple(problems))

    fields: dict[str, str] = {}
    extras: list[tuple[str, str]] = []
    attribution: Attribution = "attributed"
    for key, value in received.items():
        if key in _FIELD_SET:
            problem = check_field(key, value)
            if problem is None:
                fields[key] = value
            else:
                problems.append(problem)
        elif key == "attribution":
            if value in ATTRIBUTIONS:
                attribution = value
            else:
                problems.append(Problem("invalid", "attribution", f"must be one of {ATTRIBUTIONS}"))
        elif key.startswith("x."):
            problem = check_extra(key[2:], value)
            if problem is not None:
                problems.append(problem)
            elif len(extras) >= MAX_EXTRAS:
                problems.append(Problem("invalid", "extra", f"at most {MAX_EXTRAS} extra fields"))
            else:
                extras.append((key[2:], value))
        else:
            problems.append(Problem("unknown_entry", None, "not an ownership entry", "ignored"))
    return Parsed(
        present=True,
        fields=fields,
        extras=tuple(sorted(extras)),
        attribution=attribution,
        signature=signature,
        problems=tuple(problems),
    )


_parse_cached = functools.lru_cache(maxsize=1024)(_parse)


def _unreadable(raw: str, member: str, name: str) -> Problem:
    """Why an ``ownership.*`` member did not match the W3C grammar."""
    if len(raw) > MAX_ENTRY_BYTES:
        return Problem("oversized", None, f"entry over {MAX_ENTRY_BYTES} bytes")
    if "=" not in member:
        return Problem("malformed", None, "entry without '='")
    # Odd whitespace (VT, FF, NBSP, NEL, ...), characters outside the baggage octets, an
    # invalid property: OpenTelemetry drops such a member too.
    return Problem("malformed", _field_name(name), "not a W3C baggage member")


def _field_name(key: str) -> str | None:
    # Name a field in a problem only when it is one of ours: never echo a hostile key.
    if key in _FIELD_SET or key in ("v", "sig", "attribution"):
        return key
    if key.startswith("x.") and check_extra(key[2:], "x") is None:
        return "extra." + key[2:]
    return None


def entries_of(envelope: Envelope) -> dict[str, str]:
    """The wire entries of an envelope (prefix removed, no signature), in wire order."""
    entries = {"v": str(envelope.version)}
    for name in FIELDS:
        value = getattr(envelope, name)
        if value is not None:
            entries[name] = value
    if envelope.attribution != "attributed":
        entries["attribution"] = envelope.attribution
    for key, value in envelope.extras:
        entries["x." + key] = value
    return entries


def encode_header(envelope: Envelope, keys: Keys | None = None) -> str:
    """The envelope as one header value (ownership entries only), signed when keys can sign.

    Field values are tokens of the contract, all legal in baggage values, so nothing needs
    percent-encoding. Cached: a unit of work usually makes several outbound calls with one
    envelope, and signing costs more than the rest of the call.
    """
    return _encode_header_cached(envelope, keys)


def _encode_header(envelope: Envelope, keys: Keys | None) -> str:
    entries = entries_of(envelope)
    text = ",".join(f"{PREFIX}{k}={v}" for k, v in entries.items())
    if keys is not None and keys.signing_keys:
        text += f",{PREFIX}sig={keys.sign(entries)}"
    return text


_encode_header_cached = functools.lru_cache(maxsize=512)(_encode_header)
_NO_TRACE_ID: Final = "0" * 32  # a placeholder: no other entry holds 32 zeros


def unattributed_encoder(keys: Keys | None) -> Callable[[str], str]:
    """``trace_id -> encode_header(<a fresh unattributed envelope with that trace id>, keys)``,
    with all that does not depend on the trace id (the text around it, the signed text around
    it) computed once: what every enqueue with nothing bound writes. The signature is still
    computed per trace id. Bypasses the encoder's cache, where each such envelope, used once,
    would only push out envelopes that are used again."""
    template = assemble_checked(_NO_TRACE_ID, {}, (), "unattributed")
    head, _, tail = _encode_header(template, None).partition(_NO_TRACE_ID)
    if keys is None or not keys.signing_keys:
        return lambda trace_id: f"{head}{trace_id}{tail}"
    before, after = signed_text_around(entries_of(template), "trace_id")
    tail += f",{PREFIX}sig="
    sign = keys.sign_signed_text
    # value_text() of any trace id (32 ASCII characters: checked before it gets here).
    before += value_text(_NO_TRACE_ID)[:-32]

    def encoded(trace_id: str) -> str:
        return f"{head}{trace_id}{tail}{sign(before + trace_id.encode() + after)}"

    return encoded


def decode_header(
    value: str | None, keys: Keys | None = None
) -> tuple[Envelope | None, tuple[Problem, ...]]:
    """Read an envelope from a queue header value. Never raises."""
    return _to_envelope(parse(value or ""), None, keys)


def encode(
    envelope: Envelope, carrier: MutableMapping[str, str], keys: Keys | None = None
) -> tuple[Problem, ...]:
    """Write the envelope into ``carrier["baggage"]``, keeping foreign entries that fit.

    Ours always go in; see `merge_baggage` for what happens when the header would not fit
    within the W3C limits. Returns one ``"ignored"`` problem per reason members were dropped.
    """
    return put_baggage(carrier, encode_header(envelope, keys))


def put_baggage(carrier: MutableMapping[str, str], ours: str) -> tuple[Problem, ...]:
    """`encode` with the envelope already encoded (``ours``: `encode_header`'s text)."""
    existing = carrier.get(BAGGAGE_HEADER)
    if not existing:
        carrier[BAGGAGE_HEADER] = ours
        return ()
    carrier[BAGGAGE_HEADER], problems = merge_baggage(existing, ours)
    return problems


def merge_baggage(existing: str, ours: str) -> tuple[str, tuple[Problem, ...]]:
    """``existing`` baggage with its ``ownership.*`` members replaced by ``ours``.

    Ownership is the contract: when the merged header would pass 180 members or 8192 bytes,
    ours stay and whole foreign members are dropped (never a partial one, never altered),
    keeping the earliest ones that fit, as a W3C receiver would. Each drop is counted in
    `events.stats` (``foreign_baggage_dropped_members`` / ``_bytes``) and logged once per
    reason per process, without the members' content.
    """
    foreign = [m for m in existing.split(",") if _is_foreign(m)]
    merged = ",".join([*foreign, ours])
    ours_count = ours.count(",") + 1
    if len(foreign) + ours_count <= MAX_BAGGAGE_ENTRIES and _size(merged) <= MAX_BAGGAGE_BYTES:
        return merged, ()
    room_members = MAX_BAGGAGE_ENTRIES - ours_count
    room_bytes = MAX_BAGGAGE_BYTES - _size(ours)
    kept: list[str] = []
    dropped = {"members": 0, "bytes": 0}
    for member in foreign:
        size = _size(member) + 1  # and its comma
        if len(kept) >= room_members:
            dropped["members"] += 1
        elif size > room_bytes:
            dropped["bytes"] += 1
        else:
            kept.append(member)
            room_bytes -= size
    kept.append(ours)
    return ",".join(kept), tuple(_dropped(reason, n) for reason, n in dropped.items() if n)


def _is_foreign(member: str) -> bool:
    stripped = member.strip(_OWS)
    return bool(stripped) and not stripped.startswith(PREFIX)


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


_LIMITS: Final = {
    "members": f"{MAX_BAGGAGE_ENTRIES} members",
    "bytes": f"{MAX_BAGGAGE_BYTES} bytes",
}
_warned_drops: set[str] = set()


def _dropped(reason: str, n: int) -> Problem:
    counter = f"foreign_baggage_dropped_{reason}"
    events.count(counter, n)
    if reason not in _warned_drops:
        _warned_drops.add(reason)
        logger.warning(
            "ownership_ctx: outgoing baggage would exceed %s; dropped %d whole foreign "
            "member(s) to keep the ownership entries (counted in events.stats[%r]; "
            "logged once)",
            _LIMITS[reason],
            n,
            counter,
        )
    return Problem(
        "foreign_baggage_dropped",
        None,
        f"foreign members dropped to stay within {_LIMITS[reason]}",
        "ignored",
    )


def decode(
    carrier: Mapping[str, str], keys: Keys | None = None
) -> tuple[Envelope | None, tuple[Problem, ...]]:
    """Read the envelope from an HTTP carrier (``baggage``, and ``traceparent`` for the trace id).

    Returns ``(None, problems)`` when the carrier holds no ownership entries, or no trace id.
    When ``keys`` can verify and the envelope is signed, a bad signature drops it.
    """
    parsed = parse(carrier.get(BAGGAGE_HEADER) or "")
    return _to_envelope(parsed, trace_id_from_traceparent(carrier.get(TRACEPARENT_HEADER)), keys)


def _to_envelope(
    parsed: Parsed, fallback_trace_id: str | None, keys: Keys | None
) -> tuple[Envelope | None, tuple[Problem, ...]]:
    if not parsed.present:
        return None, parsed.problems
    problems = parsed.problems
    signature = parsed.signature
    if signature is not None and keys is not None and keys.signing_keys:
        problem = signature_problem(parsed, signature, keys)
        if problem is not None:
            return None, (*problems, problem)
    trace_id = parsed.fields.get("trace_id", fallback_trace_id)
    if trace_id is None:
        return None, (*problems, Problem("missing", "trace_id", "no trace id in the carrier"))
    return assemble_checked(trace_id, parsed.fields, parsed.extras, parsed.attribution), problems


_OLD_SIGNATURE = re.compile(r"s1:[0-9a-f]{32}")


def signature_problem(
    parsed: Parsed, signature: str, keys: Keys, trace_id: str | None = None
) -> Problem | None:
    """Why ``signature`` does not vouch for the envelope ``parsed`` describes; ``None`` when it
    does, under one of ``keys``' signing keys.

    The envelope's entries are checked against their grammar first: a signed envelope with any
    malformed, unknown, duplicated or invalid ownership entry is refused whole. Then the
    signature is checked over the canonical form of the envelope those entries make.
    ``trace_id``: the envelope's own trace id, when it was cut out of the text beforehand
    (`split_volatile`).
    """
    if _SIGNATURE_VALUE.fullmatch(signature) is None:
        if _OLD_SIGNATURE.fullmatch(signature) is not None:
            return Problem(
                "bad_signature",
                "sig",
                "signature format s1 is refused (it could be forged by folding entries); "
                f"the sender must upgrade to sign {SIGNATURE_VERSION}",
            )
        return Problem("bad_signature", "sig", f"not a {SIGNATURE_VERSION} signature")
    if parsed.problems:
        return Problem(
            "bad_signature", "sig", "a signed envelope must hold only valid ownership entries"
        )
    entries = _signed_entries(parsed)
    if trace_id is not None:
        entries.setdefault("trace_id", trace_id)
    if "trace_id" not in entries or not keys.verify(entries, signature):
        return Problem("bad_signature", "sig", "signature does not verify")
    return None


def _signed_entries(parsed: Parsed) -> dict[str, str]:
    """What `entries_of` gives for the envelope ``parsed`` makes (checked by a test), without
    building it: the version, the fields, a non-default attribution, the extras."""
    entries = {"v": str(FORMAT_VERSION), **parsed.fields}
    if parsed.attribution != "attributed":
        entries["attribution"] = parsed.attribution
    for key, value in parsed.extras:
        entries["x." + key] = value
    return entries


def verifies_volatile(rest: str, trace_id: str, signature: str, keys: Keys) -> bool:
    """Whether ``signature`` vouches for the envelope of ``rest`` (a text `split_volatile` cut
    ``trace_id`` and ``signature`` out of) with that trace id: `signature_problem` with the
    part of the signed text that repeats across requests computed once per ``rest``."""
    if _SIGNATURE_VALUE.fullmatch(signature) is None:
        return False
    around = _signed_around(rest)
    if around is None:
        return False
    before, after = around
    return keys.verify_signed_text(before + value_text(trace_id) + after, signature)


@functools.lru_cache(maxsize=1024)
def _signed_around(rest: str) -> tuple[bytes, bytes] | None:
    parsed = parse(rest)
    if parsed.problems or "trace_id" in parsed.fields:
        return None  # a signed envelope must hold only valid entries, and one trace id
    return signed_text_around(_signed_entries(parsed), "trace_id")

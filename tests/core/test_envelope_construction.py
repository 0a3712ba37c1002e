"""Every way to build or copy an `Envelope` checks the field rules (issue 11, item 2).

Envelope was a NamedTuple, whose ``_replace`` and ``_make`` built instances without the checks.
It is now a frozen, slotted class: each path below either validates or does not exist.
"""

from __future__ import annotations

import copy
import pickle
import sys
from typing import Any

import pytest

from ownership_ctx import Envelope, InvalidEnvelope

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
RAW = "jane@example.com"
VALID = Envelope(
    trace_id=TRACE,
    owner_team="search",
    tenant="h1:" + "a" * 32,
    extras={"cost_center": "cc-1"},
    attribution="stamped",
)


def test_the_constructor_validates() -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        Envelope(trace_id=TRACE, tenant=RAW)
    assert [(p.field, p.code) for p in caught.value.problems] == [("tenant", "raw_identifier")]
    assert RAW not in str(caught.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"trace_id": None},
        {"trace_id": 1},
        {"owner_team": 5},
        {"attribution": "trusted"},
        {"version": 2},
        {"version": "1"},
        {"extras": {"cost_center": 1}},  # normalized to a string, then checked
        {"extras": [("a", "x"), ("a", "y")]},
        {"extras": [("a",)]},
        {"extras": 5},
    ],
)
def test_the_constructor_validates_every_argument(kwargs: dict[str, Any]) -> None:
    arguments = {"trace_id": TRACE, **kwargs}
    if kwargs == {"extras": {"cost_center": 1}}:
        assert Envelope(**arguments).extras == (("cost_center", "1"),)
        return
    with pytest.raises(InvalidEnvelope):
        Envelope(**arguments)


@pytest.mark.parametrize("method", ["replace", "_replace", "__replace__"])
def test_copies_with_changes_validate(method: str) -> None:
    make = getattr(VALID, method)
    assert make(owner_team="billing") == Envelope(**{**VALID.as_kwargs(), "owner_team": "billing"})
    with pytest.raises(InvalidEnvelope):
        make(tenant=RAW)
    with pytest.raises(InvalidEnvelope):
        make(attribution="trusted")
    with pytest.raises(TypeError):
        make(nonsense="x")


@pytest.mark.skipif(sys.version_info < (3, 13), reason="copy.replace is new in Python 3.13")
def test_copy_replace_validates() -> None:
    with pytest.raises(InvalidEnvelope):
        copy.replace(VALID, tenant=RAW)  # type: ignore[attr-defined]


def test_copy_and_deepcopy_return_the_same_valid_envelope() -> None:
    assert copy.copy(VALID) is VALID
    assert copy.deepcopy(VALID) is VALID
    assert copy.deepcopy({"e": VALID})["e"] == VALID


def test_pickle_round_trips_through_the_checked_constructor() -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(VALID, protocol)) == VALID
    # A pickle altered to carry a raw id is refused when loaded.
    tampered = pickle.dumps(VALID).replace(b"h1:" + b"a" * 32, b"jane@example.com" + b" " * 19)
    with pytest.raises(InvalidEnvelope):
        pickle.loads(tampered)


def test_reduce_names_the_checked_constructor() -> None:
    constructor, arguments = VALID.__reduce__()
    assert constructor is Envelope and constructor(*arguments) == VALID
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        reduced = VALID.__reduce_ex__(protocol)
        assert reduced[0] is Envelope


def test_the_namedtuple_factories_are_gone() -> None:
    assert not hasattr(Envelope, "_make")
    assert not isinstance(VALID, tuple)
    with pytest.raises(TypeError):
        VALID[0]  # type: ignore[index]
    with pytest.raises(TypeError):
        tuple.__new__(Envelope, (TRACE,) * 9)  # type: ignore[type-var]


def test_fields_cannot_be_set_or_deleted() -> None:
    for name in ("trace_id", "tenant", "extras", "attribution", "version", "_hash", "new"):
        with pytest.raises(AttributeError):
            setattr(VALID, name, "x")
        with pytest.raises(AttributeError):
            delattr(VALID, name)
    assert VALID.tenant == "h1:" + "a" * 32
    assert not hasattr(VALID, "__dict__")


def test_it_cannot_be_subclassed() -> None:
    with pytest.raises(TypeError):

        class Lax(Envelope):  # type: ignore[misc]
            pass


def test_a_bare_instance_has_no_fields_to_read() -> None:
    """``object.__new__`` skips every constructor in Python; what it makes holds nothing."""
    bare = object.__new__(Envelope)
    with pytest.raises(AttributeError):
        _ = bare.trace_id


def test_equality_hash_and_repr() -> None:
    same = Envelope(**VALID.as_kwargs())
    assert same == VALID and hash(same) == hash(VALID) and same is not VALID
    assert VALID.replace(owner_team="billing") != VALID
    assert VALID.as_kwargs() != VALID and tuple(VALID.as_kwargs().values()) != VALID
    assert len({VALID, same, VALID.replace(user="h1:" + "b" * 32)}) == 2
    assert repr(VALID).startswith("Envelope(trace_id='4bf92f3577b34da6a3ce929d0e0e4736', ")
    assert eval(repr(VALID)) == VALID


def test_as_kwargs_rebuilds_the_envelope() -> None:
    assert Envelope(**VALID.as_kwargs()) == VALID
    assert VALID._asdict() == VALID.as_kwargs()
    assert list(VALID.as_kwargs()) == [
        "trace_id",
        "owner_team",
        "workflow_id",
        "feature",
        "tenant",
        "user",
        "extras",
        "attribution",
        "version",
    ]

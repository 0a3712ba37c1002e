"""A caller cannot replace the bound envelope through ``message.options`` (issue 11, item 4).

With an envelope bound, one the caller sets in the options is kept only when it verifies under
the policy (here: signed with the deployment's key); garbage and unsigned envelopes naming
another team are refused, counted and logged once per reason, and the bound one is sent.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ownership_ctx import Keys, bind, encode_header, events
from ownership_ctx.codec import QUEUE_HEADER
from tests.dramatiq.app import keys
from tests.dramatiq.conftest import Deployment
from tests.dramatiq.support import envelope, seen, unique

OTHER = envelope(owner_team="other-team")
CALLERS: dict[str, tuple[Any, str]] = {
    # node -> (the caller's option value, whose envelope the worker must see)
    "garbage": ("not an envelope at all", "bound"),
    "malformed": ("ownership.v=1,ownership.trace_id=xyz,ownership.owner_team=bad team!", "bound"),
    "unsigned-other-team": (encode_header(OTHER), "bound"),
    "wrong-key": (
        encode_header(OTHER, Keys(signing_keys=(b"not-the-deployment-key-01",))),
        "bound",
    ),
    "not-text": ({"owner_team": "other-team"}, "bound"),
    "signed-other-team": (encode_header(OTHER, keys()), "caller"),
}


def _send(dep: Deployment, rec: str) -> Any:
    bound = envelope(owner_team="bound-team")
    with bind(bound):
        for node, (value, _) in CALLERS.items():
            dep.actors.record.send_with_options(args=(rec, "t", node), **{QUEUE_HEADER: value})
    return bound


def _check(dep: Deployment, rec: str, bound: Any) -> None:
    records = {r["node"]: r for r in dep.recorder.wait(rec, len(CALLERS))}
    for node, (_, whose) in CALLERS.items():
        assert seen([records[node]]) == [bound if whose == "bound" else OTHER], node


@pytest.mark.brokers
def test_a_bound_envelope_is_replaced_only_by_one_that_verifies(deployment: Deployment) -> None:
    rec = unique("caller")
    before = events.stats["dramatiq_caller_envelope_refused"]
    bound = _send(deployment, rec)
    assert events.stats["dramatiq_caller_envelope_refused"] - before == len(CALLERS) - 1
    _check(deployment, rec, bound)


def test_refusals_are_counted_and_logged_once_per_reason(
    stub: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ownership_ctx")
    before = events.stats["dramatiq_caller_envelope_refused"]
    for _ in range(2):
        rec = unique("caller-stub")
        bound = _send(stub, rec)
        _check(stub, rec, bound)
    assert events.stats["dramatiq_caller_envelope_refused"] - before == 2 * (len(CALLERS) - 1)
    lines = [r.getMessage() for r in caplog.records if "was not used" in r.getMessage()]
    reasons = sorted(line.split("(")[1].split(")")[0] for line in lines)
    # Logged once per reason, naming the reason, never the value.
    assert reasons == sorted(set(reasons))
    assert {"no ownership entries", "invalid", "unsigned", "bad_signature", "not text"} >= set(
        reasons
    )
    assert len(reasons) >= 4
    for line in lines:
        assert "other-team" not in line and "bad team!" not in line


def test_with_nothing_bound_the_callers_envelope_goes_as_it_is(stub: Deployment) -> None:
    """A script or a scheduler may set it on purpose; the worker's policy judges it."""
    rec = unique("caller-unbound")
    stub.actors.record.send_with_options(
        args=(rec, "t", "signed"), **{QUEUE_HEADER: encode_header(OTHER, keys())}
    )
    assert seen(stub.recorder.wait(rec, 1)) == [OTHER]

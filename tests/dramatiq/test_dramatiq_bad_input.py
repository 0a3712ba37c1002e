"""Hostile or broken envelopes in ``message.options``: policy decides, with a clear log line that
does not echo the value; the worker keeps working; no message runs under a wrong owner."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from ownership_ctx import Keys, bind, encode_header
from ownership_ctx.codec import QUEUE_HEADER
from tests.dramatiq.app import SIGNING_KEY
from tests.dramatiq.conftest import Deployment
from tests.dramatiq.support import envelope, seen, unique

FORGED_ENV = envelope(owner_team="victim-team")
SIGNED = encode_header(FORGED_ENV, Keys(signing_keys=(SIGNING_KEY,)))
OTHER_KEY = Keys(signing_keys=(b"some-other-signing-key-000000001",))

#: name -> (option value, the problem code the log line must name). The deployments sign:
#: an unsigned envelope is set aside as such before anything else is read from it.
BAD: dict[str, tuple[Any, str]] = {
    "malformed": (
        "ownership.v=1,ownership.trace_id=xyz,ownership.owner_team=bad team!,junk",
        "unsigned",
    ),
    "oversized": ("ownership.v=1,ownership.owner_team=" + "a" * 10_000, "unsigned"),
    "forged": (SIGNED.replace("owner_team=victim-team", "owner_team=thief-team"), "bad_signature"),
    "wrong-key": (encode_header(envelope(owner_team="thief-team"), OTHER_KEY), "bad_signature"),
    "other-version": (
        encode_header(envelope(owner_team="thief-team")).replace("ownership.v=1", "ownership.v=2"),
        "unsigned",
    ),
    "not-a-string": ({"owner_team": "thief-team"}, "missing"),
    "not-ownership": ("hello, world", "missing"),
}


def _send_bad(dep: Deployment, rec: str) -> None:
    for name, (value, _) in BAD.items():
        dep.actors.record.send_with_options(args=(rec, "t", name), **{QUEUE_HEADER: value})


def _check_records(dep: Deployment, rec: str) -> dict[str, Any]:
    good = envelope(owner_team="good-team")
    with bind(good):  # after all of that, the worker still runs good work correctly
        dep.actors.record.send(rec, "t", "good")
    records = {r["node"]: r for r in dep.recorder.wait(rec, len(BAD) + 1)}
    assert seen([records.pop("good")]) == [good]
    for name, record in records.items():
        env = seen([record])[0]
        assert env is not None, name
        # Quarantined, with no owner at all: never the forged one, never anyone else's.
        assert env.owner_team is None and env.workflow_id is None and env.feature is None, name
        assert env.attribution == "quarantined", name
        assert env.trace_id not in (FORGED_ENV.trace_id, good.trace_id), name
    return records


@pytest.mark.brokers
def test_bad_envelopes_are_quarantined_with_a_clear_log_line(deployment: Deployment) -> None:
    rec = unique("bad")
    _send_bad(deployment, rec)
    records = _check_records(deployment, rec)
    # The gate's warning is written while the quarantined envelope is bound, so the log
    # handler has it under that unit's trace id.
    deadline = time.monotonic() + 10
    for name, record in records.items():
        code = BAD[name][1]
        while True:
            lines = [
                line["message"]
                for line in deployment.recorder.read(deployment.log_key)
                if line.get("trace_id") == record["env"]["trace_id"]
                and line.get("logger") == "ownership_ctx"
            ]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith("ownership envelope quarantined on dramatiq 'oc_record': ")
        assert code in lines[0], (name, lines[0])
        for echoed in ("thief-team", "bad team!", "aaaaaaaa", "hello"):
            assert echoed not in lines[0], (name, lines[0])


def test_bad_envelopes_on_the_stub_broker(stub: Deployment) -> None:
    _check_records(stub, _send_and_wait(stub))


def _send_and_wait(dep: Deployment) -> str:
    rec = unique("bad-stub")
    _send_bad(dep, rec)
    return rec


def test_enforced_actor_dead_letters_bad_envelopes_with_a_log_line(
    stub: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rec = unique("bad-strict")
    for name, (value, _) in BAD.items():
        stub.actors.strict.send_with_options(args=(rec, "t", name), **{QUEUE_HEADER: value})
    good = envelope()
    with bind(good):
        stub.actors.strict.send(rec, "t", "good")
    stub.broker.join(stub.actors.queue, fail_fast=False)  # type: ignore[call-arg]
    stub.worker.join()  # type: ignore[union-attr]
    assert seen(stub.recorder.read(rec)) == [good]
    dead = stub.broker.dead_letters  # type: ignore[attr-defined]
    assert sorted(m.args[2] for m in dead) == sorted(BAD)
    skips = [r.getMessage() for r in caplog.records if r.name == "ownership_ctx.dramatiq"]
    assert sum("ownership envelope rejected" in line for line in skips) == len(BAD)
    assert any("non-string ownership_envelope option" in line for line in skips)
    for line in skips:
        assert "thief-team" not in line and "bad team!" not in line

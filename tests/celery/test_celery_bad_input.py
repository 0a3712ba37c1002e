"""Hostile or broken ownership headers, published with plain kombu as another service would.

Policy decides: ``oc.e.node`` (enforce) is refused, ``oc.q.node`` (quarantine) runs with no
owner. The worker never crashes, never gives a task an owner it was not validly given, and
logs why without echoing the received values (every hostile value contains ``EVIL``).
"""

from __future__ import annotations

from typing import Any

import pytest

from ownership_ctx import Keys, new_trace_id
from ownership_ctx.codec import QUEUE_HEADER, encode_header
from tests.celery import app as celery_app
from tests.celery.support import Worker, make_envelope, new_wf, raw_publish, wait_records

FORGER = Keys(signing_keys=(b"not-the-shared-key-of-the-tests",))


def _bad_headers() -> dict[str, Any]:
    env = make_envelope("EVIL-1", extras=False)
    signed = encode_header(env, celery_app.KEYS)
    trace = new_trace_id()
    return {
        "malformed": f"ownership.v=1,ownership.trace_id={trace},ownership.owner_team=EVIL team!",
        "garbage": "ownership.EVIL,,ownership.=;;ownership.owner_team",
        "oversized": "ownership.v=1,ownership.owner_team=EVIL-big,ownership.x.pad=" + "a" * 9000,
        "forged_signature": encode_header(env.replace(owner_team="EVIL-forged"), FORGER),
        "altered_after_signing": signed.replace("team-EVIL-1", "EVIL-altered"),
        "other_version": f"ownership.v=2,ownership.trace_id={trace},ownership.owner_team=EVIL-v2",
        "duplicate_owner": signed + ",ownership.owner_team=EVIL-dup",
        "not_text_number": 12345,
        "not_text_mapping": {"owner_team": "EVIL-dict"},
    }


CASES = list(_bad_headers())
CONFIGS_UNDER_TEST = ["rabbit-threads", "signed-solo"]


def run_all(w: Worker) -> dict[str, Any]:
    published = {}
    for case, value in _bad_headers().items():
        wf = new_wf(case)
        args = ({"wf": wf, "label": "q"},)
        raw_publish(w.app, "oc.q.node", args, {QUEUE_HEADER: value})
        refused_id = raw_publish(
            w.app, "oc.e.node", ({"wf": wf, "label": "e"},), {QUEUE_HEADER: value}
        )
        published[case] = (wf, refused_id)
    # Then a good one on each side, and an unsigned one (not believed: the workers have keys).
    good, unsigned = make_envelope("good"), make_envelope("unsigned")
    wf_good, wf_unsigned = new_wf("good"), new_wf("unsigned")
    raw_publish(
        w.app,
        "oc.e.node",
        ({"wf": wf_good, "label": "e"},),
        {QUEUE_HEADER: encode_header(good, celery_app.KEYS)},
    )
    raw_publish(
        w.app,
        "oc.q.node",
        ({"wf": wf_unsigned, "label": "q"},),
        {QUEUE_HEADER: encode_header(unsigned)},
    )
    expected = {wf: 1 for wf, _ in published.values()} | {wf_good: 1, wf_unsigned: 1}
    got = wait_records(expected)
    return {
        "cases": {case: (got.get(wf, []), tid) for case, (wf, tid) in published.items()},
        "good": (got[wf_good], good),
        "unsigned": (got[wf_unsigned], unsigned),
    }


def outcomes(w: Worker) -> dict[str, Any]:
    if __name__ not in w.results:
        w.results[__name__] = run_all(w)
    return w.results[__name__]


@pytest.mark.brokers
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("config", CONFIGS_UNDER_TEST)
def test_bad_header_is_handled_by_policy(worker_for: Any, config: str, case: str) -> None:
    w = worker_for(config)
    recs, refused_id = outcomes(w)["cases"][case]
    # quarantine: ran once, with no owner at all; enforce: the body never ran.
    assert [r["label"] for r in recs] == ["q"]
    env = recs[0]["env"]
    assert set(env) == {"trace_id", "attribution"}, env
    assert env["attribution"] == "quarantined"
    assert "EVIL" not in str(env)
    result = w.app.AsyncResult(refused_id)
    result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "TaskRefused"

    lines = w.log_lines()
    refused = [x for x in lines if refused_id in x.get("msg", "") and "refused" in x["msg"]]
    assert len(refused) == 1, "one clear line naming the refused task"
    assert not [x for x in lines if "EVIL" in str(x)], "hostile values are never logged"
    assert w.alive()


@pytest.mark.brokers
@pytest.mark.parametrize("config", CONFIGS_UNDER_TEST)
def test_valid_signed_envelope_is_accepted(worker_for: Any, config: str) -> None:
    w = worker_for(config)
    recs, good = outcomes(w)["good"]
    assert [r["env"] for r in recs] == [good.as_dict()]


@pytest.mark.brokers
@pytest.mark.parametrize("config", CONFIGS_UNDER_TEST)
def test_unsigned_envelope_is_not_believed_where_keys_are_configured(
    worker_for: Any, config: str
) -> None:
    # Both policies: trust="signed", and trust="all" without accept_unsigned (the default).
    w = worker_for(config)
    recs, unsigned = outcomes(w)["unsigned"]
    [env] = [r["env"] for r in recs]
    assert set(env) == {"trace_id", "attribution"} and env["attribution"] == "quarantined"
    assert env["trace_id"] != unsigned.trace_id

"""A caller cannot replace the bound envelope with ``apply_async(headers=...)`` (issue 11, item 4).

With an envelope bound, one the caller passes is kept only when it verifies under the policy
(signed with the shared key); garbage and unsigned envelopes naming another team are refused,
counted and logged once per reason, and the bound one is published. On a real worker (Redis)
and on an embedded one (in-memory transport, worker thread in this process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from ownership_ctx import Envelope, Keys, Policy, bind, current, events
from ownership_ctx.celery import install
from ownership_ctx.codec import QUEUE_HEADER, encode_header
from tests.celery import app as celery_app
from tests.celery.support import make_envelope, new_wf, wait_records

BOUND = make_envelope("bound")
OTHER = make_envelope("other")
FORGER = Keys(signing_keys=(b"not-the-shared-key-of-the-tests",))
#: case -> (what the caller passes, whose envelope the task must see)
CASES: dict[str, tuple[Any, Envelope]] = {
    "garbage": ("not an envelope at all", BOUND),
    "malformed": (
        f"ownership.v=1,ownership.trace_id={OTHER.trace_id},ownership.owner_team=x y",
        BOUND,
    ),
    "unsigned_other_team": (encode_header(OTHER), BOUND),
    "wrong_key": (encode_header(OTHER, FORGER), BOUND),
    "not_text": (12345, BOUND),
    "signed_other_team": (encode_header(OTHER, celery_app.KEYS), OTHER),
}


@pytest.mark.brokers
def test_a_bound_envelope_is_replaced_only_by_one_that_verifies(worker_for: Any) -> None:
    w = worker_for("redis-rpc-solo")
    wfs = {case: new_wf(f"caller-{case}") for case in CASES}
    before = events.stats["celery_caller_envelope_refused"]
    with bind(BOUND):
        for case, (value, _) in CASES.items():
            w.app.tasks["oc.q.node"].apply_async(
                ({"wf": wfs[case], "label": "q"},), headers={QUEUE_HEADER: value}
            )
    assert events.stats["celery_caller_envelope_refused"] - before == len(CASES) - 1
    got = wait_records(dict.fromkeys(wfs.values(), 1))
    for case, (_, expected) in CASES.items():
        [record] = got[wfs[case]]
        assert record["env"] == expected.as_dict(), case


@pytest.fixture
def embedded() -> Iterator[tuple[Celery, list[tuple[str, Envelope | None]]]]:
    app = Celery("oc-caller", broker="memory://", backend="cache+memory://", set_as_current=False)
    seen: list[tuple[str, Envelope | None]] = []
    lock = threading.Lock()

    @app.task(name="oc.caller.record", shared=False)
    def record(label: str) -> None:
        with lock:
            seen.append((label, current()))

    policy = Policy(mode="quarantine", extra_keys=("cost_center",))
    hooks = install(app, policy=policy, keys=celery_app.KEYS)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            yield app, seen
    finally:
        hooks.uninstall()


def test_on_an_embedded_worker_and_refusals_are_logged_once_per_reason(
    embedded: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app, seen = embedded
    caplog.set_level(logging.INFO, logger="ownership_ctx")
    results = []
    with bind(BOUND):
        for _ in range(2):
            for case, (value, _) in CASES.items():
                results.append(
                    app.tasks["oc.caller.record"].apply_async(
                        (case,), headers={QUEUE_HEADER: value}
                    )
                )
    for result in results:
        result.get(timeout=30)
    expected = {case: whose for case, (_, whose) in CASES.items()}
    assert sorted(seen, key=lambda s: s[0]) == sorted(
        [(case, whose) for case, whose in expected.items()] * 2, key=lambda s: s[0]
    )
    lines = [r.getMessage() for r in caplog.records if "was not used" in r.getMessage()]
    reasons = [line.split("(")[1].split(")")[0] for line in lines]
    assert sorted(reasons) == sorted(
        {"no ownership entries", "invalid", "unsigned", "bad_signature", "not text"}
    )
    for line in lines:
        assert "team-other" not in line


def test_with_nothing_bound_the_callers_envelope_is_published_as_it_is(embedded: Any) -> None:
    app, seen = embedded
    value = encode_header(OTHER, celery_app.KEYS)
    app.tasks["oc.caller.record"].apply_async(("unbound",), headers={QUEUE_HEADER: value}).get(
        timeout=30
    )
    assert seen == [("unbound", OTHER)]

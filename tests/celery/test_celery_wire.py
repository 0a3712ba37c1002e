"""What the publish hook writes into a message, read back raw from a real broker queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Queue

from ownership_ctx import bind
from ownership_ctx.codec import QUEUE_HEADER, encode_header, parse
from tests.celery import app as celery_app
from tests.celery.support import REDIS_DB, make_envelope


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    queue = f"oc-wire-{uuid.uuid4().hex[:8]}"
    app = celery_app.make_app(
        broker=REDIS_DB, backend=None, queue=queue, records_url=REDIS_DB, records_key="unused"
    )
    try:
        yield app
    finally:
        with app.connection_for_write() as conn:
            Queue(queue, channel=conn.default_channel).delete()


def published(app: Celery, **options: Any) -> dict[str, Any]:
    """Publish one task with no worker listening and return the message's headers."""
    app.tasks["oc.q.node"].apply_async(({"wf": "w", "label": "a"},), **options)
    with app.connection_for_read() as conn:
        queue = Queue(app.conf.task_default_queue, channel=conn.default_channel)
        message = queue.get(no_ack=True)
        assert message is not None
        return dict(message.headers)


@pytest.mark.brokers
def test_envelope_at_top_level_and_mirrored_into_nested_headers(app: Celery) -> None:
    env = make_envelope("wire")
    with bind(env):
        headers = published(app)
    expected = encode_header(env, celery_app.KEYS)  # signed: the app has signing keys
    assert headers[QUEUE_HEADER] == expected
    assert headers["headers"] == {QUEUE_HEADER: expected}


@pytest.mark.brokers
def test_publish_without_envelope_is_marked_unattributed_never_reused(app: Celery) -> None:
    with bind(make_envelope("someone-else")):
        published(app)
    first, second = published(app), published(app)
    envs = [parse(h[QUEUE_HEADER]) for h in (first, second)]
    assert [e.attribution for e in envs] == ["unattributed", "unattributed"]
    assert all(set(e.fields) == {"trace_id"} for e in envs)
    assert envs[0].fields["trace_id"] != envs[1].fields["trace_id"]


@pytest.mark.brokers
def test_existing_envelope_is_kept_and_foreign_nested_headers_are_not_mutated(app: Celery) -> None:
    original = encode_header(make_envelope("original"), celery_app.KEYS)
    vendor = {"vendor-trace": "abc"}
    with bind(make_envelope("current")):
        headers = published(app, headers={QUEUE_HEADER: original, "headers": vendor})
    assert headers[QUEUE_HEADER] == original  # a re-enqueue keeps the original owner
    assert headers["headers"] == {"vendor-trace": "abc", QUEUE_HEADER: original}
    assert vendor == {"vendor-trace": "abc"}  # the caller's dict is left as it was

"""The harness survives what brokers do to idle connections (issue 19, item 1).

RabbitMQ resets a connection that misses its heartbeats; the test process's publishing
connection sits idle while other tests run. Cleanup must not depend on it, and a test that
sends after the reset must get a fresh connection.
"""

from __future__ import annotations

import time

import pika
import pytest

from tests.dramatiq.app import Recorder, make_broker
from tests.dramatiq.conftest import _cleanup_broker, release_connections
from tests.dramatiq.support import SESSION

pytestmark = pytest.mark.brokers


def _short_heartbeat(url: str) -> str:
    url = url[:-2] + "/%2F" if url.endswith("//") else url
    return url + ("&" if "?" in url else "?") + "heartbeat=1"


def test_cleanup_after_the_broker_reset_the_idle_connection(rabbitmq_url: str) -> None:
    broker = make_broker("rabbitmq", _short_heartbeat(rabbitmq_url))
    queue = f"oc-dq-{SESSION}-harness-reset"
    broker.declare_queue(queue)
    broker.channel.queue_declare(queue, durable=True)
    idle = broker.connection
    time.sleep(6)  # no I/O, no heartbeats sent: RabbitMQ resets the connection
    with pytest.raises(pika.exceptions.AMQPError):
        idle.process_data_events(0)  # the reset the original cleanup died of
    _cleanup_broker("rabbitmq", broker, queue, Recorder(None))

    check = pika.BlockingConnection(pika.URLParameters(_short_heartbeat(rabbitmq_url)))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            check.channel().queue_declare(queue, passive=True)  # deleted
    finally:
        check.close()


def test_released_connection_is_reopened_on_next_use(rabbitmq_url: str) -> None:
    broker = make_broker("rabbitmq", rabbitmq_url)
    try:
        first = broker.connection
        release_connections(broker)
        assert not first.is_open
        assert broker.connection is not first and broker.connection.is_open
    finally:
        release_connections(broker)
        broker.close()

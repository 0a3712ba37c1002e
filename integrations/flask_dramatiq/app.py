"""A Flask app that hands LLM work to Dramatiq workers over RabbitMQ, ownership end to end.

    flask --app integrations.flask_dramatiq.app run --port 8000
    dramatiq integrations.flask_dramatiq.app --processes 1 --threads 2

Configuration (environment): ``DOCS_BROKER_URL`` (default local RabbitMQ), ``DOCS_QUEUE``,
``ANTHROPIC_BASE_URL`` (the provider, e.g. the fake one), ``OWNERSHIP_CTX_SIGNING_KEYS``,
``OWNERSHIP_CTX_SINK_URL`` (where events go), ``DOCS_LOG`` (log file, JSON lines).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from flask import Flask, jsonify

from ownership_ctx import Keys, Policy, Rule, current
from ownership_ctx.dramatiq import OwnershipMiddleware as DramatiqOwnership
from ownership_ctx.logs import OwnershipLogFilter
from ownership_ctx.sinks import config as sinks
from ownership_ctx.wsgi import OwnershipWSGIMiddleware

KEYS = Keys.from_env()
MODEL = "claude-3-5-haiku-latest"
QUEUE = os.environ.get("DOCS_QUEUE", "documents")

sink = sinks.install()  # OWNERSHIP_CTX_SINK_URL, else a local SQLite file


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = ("trace_id", "owner_team", "workflow_id", "feature", "attribution")
        line = {"logger": record.name, "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in fields if hasattr(record, k)})
        return json.dumps(line)


_path = os.environ.get("DOCS_LOG")
_handler: logging.Handler = logging.FileHandler(_path) if _path else logging.StreamHandler()
_handler.addFilter(OwnershipLogFilter())
_handler.setFormatter(JsonLines())
logging.getLogger().addHandler(_handler)
logging.getLogger().setLevel(logging.INFO)
logging.getLogger("pika").setLevel(logging.WARNING)


# -- the broker and the worker side ----------------------------------------------------------

broker = RabbitmqBroker(url=os.environ.get("DOCS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672"))
broker.add_middleware(
    DramatiqOwnership(
        policy=Policy(
            mode="quarantine",
            # Messages published by the nightly importer (no request behind them).
            rules=(
                Rule(
                    "reindex",
                    mode="stamp",
                    defaults={
                        "owner_team": "search",
                        "workflow_id": "nightly",
                        "feature": "reindex",
                    },
                ),
            ),
        ),
        keys=KEYS,
    )
)
dramatiq.set_broker(broker)
log = logging.getLogger("docs.worker")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def classify(document: str) -> None:
    from anthropic import Anthropic

    from ownership_ctx import metering

    log.info("classifying %s", document)
    client = metering.instrument(Anthropic(api_key="sk-test", max_retries=0))
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": f"Classify document {document}"}],
    )
    envelope = current()
    log.info("classified %s for %s", document, envelope.owner_team if envelope else None)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def reindex(document: str) -> None:
    log.info("reindexing %s", document)


# -- the web app -----------------------------------------------------------------------------

app = Flask(__name__)


@app.get("/health")
def health() -> Any:
    return jsonify(status="ok")


@app.post("/documents/<document>/classify")
def classify_document(document: str) -> Any:
    message = classify.send(document)
    envelope = current()
    return jsonify(envelope=envelope.as_dict() if envelope else None, message=message.message_id)


app.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    policy=Policy(mode="enforce", rules=(Rule("/health", required=()),)),
    keys=KEYS,
)

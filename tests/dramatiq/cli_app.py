"""The broker module a `dramatiq` worker subprocess loads (``dramatiq tests.dramatiq.cli_app``).

Configured by the environment the test sets: broker kind, URL and options, queue, recorder URL,
the list that log lines go to and, optionally, the event store (``OC_SINK_URL``). It declares
the same actors and middleware as the in-process worker.
"""

from __future__ import annotations

import json
import logging
import os

import dramatiq

from tests.dramatiq.app import (
    LogToRecorder,
    Recorder,
    declare,
    install,
    make_broker,
    make_rate_limiter,
)

recorder = Recorder(os.environ["OC_RECORD_URL"])
log_key = os.environ["OC_LOG_KEY"]
if os.environ.get("OC_SINK_URL"):  # the fault tests read the events back from this store
    from ownership_ctx import sinks

    sinks.install(os.environ["OC_SINK_URL"])
options = json.loads(os.environ.get("OC_BROKER_OPTIONS") or "{}")
broker = make_broker(os.environ["OC_BROKER"], os.environ["OC_BROKER_URL"], **options)
install(broker, recorder=recorder, rate_limiter=make_rate_limiter(os.environ["OC_RECORD_URL"]))
dramatiq.set_broker(broker)
actors = declare(broker, os.environ["OC_QUEUE"], recorder, log_key)

# Added after the CLI configured logging: every line written while an envelope is bound,
# Dramatiq's own included, also goes to the recorder for the log tests.
logging.getLogger().addHandler(LogToRecorder(recorder, log_key))

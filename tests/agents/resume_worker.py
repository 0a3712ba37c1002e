"""Another process that resumes interrupted random graphs (the property test's other side).

Reads one JSON job per line on stdin, answers one JSON line on stdout:
job: {"path", "spec", "runs": [[label, thread_id], ...], "url", "resumer"}
answer: {"seen": [[label, node, owner_team], ...], "calls": [[owner_team, recorded_by], ...],
         "resumes": [owner_team, ...]}
Every resume runs under the ``resumer`` envelope, concurrently: the stored owners must win.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from langgraph.types import Command

from ownership_ctx import Envelope, bind, events, metering
from ownership_ctx import langgraph as oc_langgraph
from ownership_ctx.sinks import MemorySink
from tests.agents import graphs


def resume(graph: Any, thread_id: str, resumer: Envelope, asynchronous: bool) -> None:
    config: Any = {"configurable": {"thread_id": thread_id}}
    with bind(resumer):
        if asynchronous:
            asyncio.run(graph.ainvoke(Command(resume="go"), config))
        else:
            graph.invoke(Command(resume="go"), config)


def main() -> None:
    sink = MemorySink()
    events.set_sink(sink)
    metering.instrument_all()
    oc_langgraph.install()
    for line in sys.stdin:
        job = json.loads(line)
        graphs.SEEN.clear()
        sink.clear()
        graph = graphs.random_graph(job["spec"], graphs.load(Path(job["path"])))
        resumer = Envelope(trace_id=uuid.uuid4().hex, owner_team=job["resumer"])
        asynchronous = graphs.is_async(job["spec"])
        threads = [
            threading.Thread(target=resume, args=(graph, t, resumer, asynchronous))
            for _, t in job["runs"]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        events.flush()
        answer = {
            "seen": graphs.SEEN,
            "calls": [
                [e.get("owner_team"), e["recorded_by"]] for e in sink.of_kind("provider_call")
            ],
            "resumes": [
                e.get("owner_team")
                for e in sink.of_kind("hop")
                if e["hop"] == oc_langgraph.RESUME_HOP
            ],
        }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

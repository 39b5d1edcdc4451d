"""``kiq stats``, ``kiq queues``, ``kiq processes``: the dashboard's numbers, read-only.

Each is one read through the API (``Stats`` reads counters and queue states in one MULTI, so
they agree), then a table or ``--json``.
"""

from __future__ import annotations

import time
from typing import Any

from .. import api
from . import Context
from .output import ago, duration, process_dict, queue_dict, table


def add_parsers(sub: Any, common: Any) -> None:
    sub.add_parser("stats", parents=[common], help="counters and set sizes"
                   ).set_defaults(handler=stats)
    sub.add_parser("queues", parents=[common], help="queues: size, latency, paused"
                   ).set_defaults(handler=queues)
    sub.add_parser("processes", parents=[common], help="live worker processes"
                   ).set_defaults(handler=processes)


def stats(options: dict, ctx: Context) -> None:
    s = api.Stats()
    data = {"processed": s.processed, "failed": s.failed, "busy": s.busy,
            "enqueued": s.enqueued, "scheduled": s.scheduled_size, "retries": s.retry_size,
            "dead": s.dead_size, "processes": s.processes_size,
            "default_queue_latency": round(s.default_queue_latency, 3)}
    rows = [(name.replace("_", " "), f"{value:,}" if isinstance(value, int) else f"{value:.1f}s")
            for name, value in data.items()]
    width = max(len(name) for name, _ in rows)
    ctx.show("\n".join(f"{name.ljust(width)}  {value}" for name, value in rows), data)


def queues(options: dict, ctx: Context) -> None:
    states = api.Stats(queues=True).queues or []
    text = table(["QUEUE", "SIZE", "LATENCY", "PAUSED"],
                 [(q.name, q.size, duration(q.latency), "paused" if q.paused else "")
                  for q in states]) if states else "No queues."
    ctx.show(text, {"queues": [queue_dict(q) for q in states]})


def processes(options: dict, ctx: Context) -> None:
    procs, now = api.ProcessSet().list(), time.time()
    text = table(
        ["IDENTITY", "TAG", "QUEUES", "BUSY", "STARTED", "BEAT", "RSS", "STATE"],
        [(p.identity, p.tag, ",".join(p.queues), f"{p.busy}/{p.concurrency or '?'}",
          ago(p.started_at, now), ago(p.beat, now), f"{p.rss_kb // 1024}M",
          "quiet" if p.quiet else "running") for p in procs]) if procs else "No live processes."
    ctx.show(text, {"processes": [process_dict(p) for p in procs]})

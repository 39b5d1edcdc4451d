"""Formatting for ``manage.py kiq``: aligned tables for people, JSON with stable keys for scripts.

Pure functions of the API's records (no Redis, no settings); ``now`` is passed in so tests need
not patch time. Tables cut long cells (``WIDTH`` characters, ending in ``…``) and keep one row
per line: newlines in a job's arguments or error never break the layout. JSON keeps every value
whole, times as epoch seconds (float) or null.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..records import JobRecord, ProcessRecord, QueueState

WIDTH = 48  # widest cell of a table, in characters


def cell(value: Any, width: int = WIDTH) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)
    text = " ".join(text.split()) if ("\n" in text or "\t" in text or "\r" in text) else text
    return text if len(text) <= width else text[:width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool)
                                  for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def ago(when: float | None, now: float) -> str:
    """``"12s ago"`` / ``"in 4m"`` / ``"-"``: a time relative to ``now``."""
    if when is None:
        return "-"
    delta = when - now
    text = duration(abs(delta))
    return f"in {text}" if delta > 0.5 else f"{text} ago"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds}s"


def job_dict(record: JobRecord) -> dict[str, Any]:
    return {
        "key": record.key, "jid": record.jid, "name": record.name,
        "display_name": record.display_name, "queue": record.queue, "args": record.args,
        "kwargs": record.kwargs, "at": record.score, "created_at": record.created_at,
        "enqueued_at": record.enqueued_at, "failed_at": record.failed_at,
        "retry_count": record.retry_count, "error_class": record.error_class,
        "error_message": record.error_message, "malformed": record.malformed,
    }


def queue_dict(state: QueueState) -> dict[str, Any]:
    return {"name": state.name, "size": state.size, "latency": round(state.latency, 3),
            "paused": state.paused}


def process_dict(p: ProcessRecord) -> dict[str, Any]:
    return {
        "identity": p.identity, "hostname": p.hostname, "pid": p.pid, "tag": p.tag,
        "queues": p.queues, "concurrency": p.concurrency, "busy": p.busy, "quiet": p.quiet,
        "started_at": p.started_at, "beat": p.beat, "rss_kb": p.rss_kb, "version": p.version,
        "work": [{"thread": w.thread, "queue": w.queue, "run_at": w.run_at, "jid": w.job.jid,
                  "name": w.job.display_name, "args": w.job.args} for w in p.work],
    }

"""Job results: what ``@job(result_ttl=...)`` jobs (or all, with ``KIQ["RESULT_TTL"]``) leave.

``get(jid)`` reads a job's :class:`JobResult` (None when there is none: results off, expired,
or never enqueued). The record is written at enqueue ("queued"/"scheduled"), at start
("running"), by ``current_job().progress()``, and in the job's settle step (the final status
and value or error), so the status never disagrees with where the job is. ``wait()`` blocks on
the job's "done" list (pushed in that settle step) rather than polling. django.tasks results
(``KiqBackend``) read through the same :func:`get`, and their ``wait()`` wakes the same way
(a task's record is the same record, written by the same steps). Any thread; async forms
for async views.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from . import storage

STATUSES = ("queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    jid: str
    status: str
    value: Any = None
    error: dict[str, Any] | None = None  # class, message, backtrace
    attempt: int = 0
    enqueued_at: float | None = None
    started_at: float | None = None  # the first attempt's start
    last_attempted_at: float | None = None  # the latest attempt's start
    finished_at: float | None = None
    progress: float | None = None
    progress_message: str = ""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def wait(self, timeout: float) -> "JobResult":
        """Block until the job finished (at most ``timeout`` seconds); its final result.

        Raises TimeoutError if it did not finish in time. No polling: one blocking command
        on the job's "done" list (one every few seconds on a long wait, each under the
        connection's socket timeout).
        """
        if self.finished:
            return self
        deadline = time.monotonic() + timeout
        store = storage.get_default()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # BLMOVE takes whole or fractional seconds; 0 would block forever.
            if not store.wait_job_result(self.jid, max(left, 0.01)):
                continue  # a block ended before the deadline: block again, nothing to read
            current = get(self.jid)
            if current is None:
                break
            if current.finished:
                return current
        current = get(self.jid)  # finished as the time ran out
        if current is not None and current.finished:
            return current
        raise TimeoutError(f"job {self.jid} did not finish within {timeout}s")

    async def await_(self, timeout: float) -> "JobResult":
        """:meth:`wait` for async code (runs in a worker thread, not the event loop)."""
        return await sync_to_async(self.wait, thread_sensitive=False)(timeout)


def get(jid: str) -> JobResult | None:
    """The job's result, or None if none is kept (results off, expired, unknown jid)."""
    record = storage.get_default().job_result(str(jid))
    return from_record(str(jid), record) if record is not None else None


async def aget(jid: str) -> JobResult | None:
    return await sync_to_async(get, thread_sensitive=False)(jid)


def of_jobs(jobs: list[dict[str, Any]]) -> dict[str, JobResult]:
    """{jid: result} of the job hashes that keep a result record and have one, in one
    pipelined read; nothing is read when none keeps a result (``result_ttl``, docs/workflows.md).
    The admin's queue page shows a page of queued jobs' status and progress with it."""
    from .conf import get_settings
    from .workflows import result_ttl

    settings = get_settings()
    jids = [str(job.get("jid")) for job in jobs
            if job.get("jid") and result_ttl(job, settings) is not None]
    records = storage.get_default().job_results(jids)
    return {jid: from_record(jid, record) for jid, record in zip(jids, records) if record}


def from_record(jid: str, record: dict[str, str]) -> JobResult:
    """Read from Redis: a field that does not parse reads as missing."""
    status = record.get("status", "queued")
    return JobResult(
        jid=jid, status=status if status in STATUSES else "queued",
        value=_json(record.get("value")), error=_json(record.get("error")),
        attempt=int(_num(record.get("attempt")) or 0),
        enqueued_at=_num(record.get("enqueued_at")), started_at=_num(record.get("started_at")),
        last_attempted_at=_num(record.get("last_attempted_at")),
        finished_at=_num(record.get("finished_at")), progress=_num(record.get("progress")),
        progress_message=record.get("progress_message", ""))


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _num(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value else None

"""What a job's run means for its result record and its batch (docs/workflows.md).

Called by the worker's processor, on the processor thread, only for a job that asked for it
(``kiq_result_ttl`` in its hash, ``KIQ["RESULT_TTL"]``, or a ``bid``): :func:`on_start` records
the start and wires ``current_job().progress()`` and ``current_job().batch``;
:func:`on_outcome` adds a :class:`~django_kiq.storage.ResultWrite` and a
:class:`~django_kiq.storage.BatchMark` to the job's outcome, which the manager writes in the
job's settle step; :func:`success_mark` is that count for a batch job's success, built before
it runs. :func:`record_enqueued` is the client's "queued" record. The mapping from an
outcome to a status and a batch count is pure (:func:`status_of`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from . import batches, storage
from .conf import KiqSettings

#: outcome kind -> (result status, finished?, batch count: "s"/"f"/"d" or None: not yet)
STATUS = {
    "done": ("succeeded", True, "s"),
    "retry": ("retrying", False, "f"),
    "dead": ("failed", True, "d"),
    "discard": ("failed", True, "f"),
    "cancelled": ("cancelled", True, "f"),
    "expired": ("failed", True, "f"),
    "requeue": ("queued", False, None),
    "reschedule": ("scheduled", False, None),
}


def status_of(kind: str) -> tuple[str, bool, str | None]:
    return STATUS.get(kind, ("failed", True, "f"))


def result_ttl(job: dict[str, Any], settings: KiqSettings) -> int | None:
    """How long the job's result is kept, or None. Read from Redis: junk means the setting."""
    ttl = job.get("kiq_result_ttl")
    if type(ttl) is int and ttl >= 1:
        return ttl
    return settings.result_ttl


def attempt_of(job: dict[str, Any]) -> int:
    count = job.get("retry_count")
    return count + 2 if type(count) is int and count >= 0 else 1


def record_enqueued(store: storage.Storage, jobs: list[dict[str, Any]], settings: KiqSettings,
                    now: float, *, callbacks: bool = False) -> None:
    """Write the "queued" (or "scheduled") records of jobs that keep their result
    (:func:`enqueued_records`), after their push: a worker that started or finished one
    meanwhile keeps its own status."""
    items = enqueued_records(jobs, settings, now, callbacks=callbacks)
    if items:
        store.write_job_results(items, status_if_new=True)


def enqueued_records(jobs: list[dict[str, Any]], settings: KiqSettings, now: float, *,
                     callbacks: bool = False) -> list[tuple[str, dict[str, str], int]]:
    """The (jid, fields, ttl) records of the jobs that keep their result, as enqueued.

    ``callbacks``: the jobs are a batch's callbacks, stored in the batch until it completes:
    "scheduled", and kept at least as long as the batch's data (``BATCH_TTL``), so
    ``results.get`` and ``wait()`` find them before they run."""
    if settings.result_ttl is None and not any("kiq_result_ttl" in job for job in jobs):
        return []  # none keeps one (most enqueues): no per-job work
    items = []
    for job in jobs:
        ttl = result_ttl(job, settings)
        if ttl is None:
            continue
        at = job.get("at")
        status = "scheduled" if callbacks or (at is not None and at > now) else "queued"
        if callbacks:
            ttl = max(ttl, settings.batch_ttl)
        items.append((job["jid"], {"status": status, "class": _class_of(job),
                                   "enqueued_at": repr(now)}, ttl))
    return items


def on_start(current: Any, job: dict[str, Any], settings: KiqSettings,
             store: storage.Storage | None,
             touch: Callable[[], None] | None = None) -> None:
    """Record the start of a job keeping its result, wire ``current_job().progress()`` and
    ``.batch``."""
    if current is not None and "bid" in job:
        current.extras["batch"] = job  # CurrentJob.batch reads its lineage, if the job asks
    ttl = result_ttl(job, settings)
    if ttl is None or store is None:
        return
    jid = str(job.get("jid"))
    store.start_job_result(jid, {"status": "running", "last_attempted_at": repr(time.time()),
                                 "attempt": str(attempt_of(job)),
                                 "class": _class_of(job)}, ttl)

    def report(percent: float, message: str) -> None:
        store.write_job_results([(jid, {"progress": repr(percent),
                                        "progress_message": message}, ttl)])
        if touch is not None:
            touch()

    if current is not None:
        current.extras["report_progress"] = report


def on_outcome(outcome: Any, job: dict[str, Any], value: Any, settings: KiqSettings) -> Any:
    """``outcome`` with its result record and batch count added (unchanged if neither)."""
    ttl = result_ttl(job, settings)
    status, finished, count = status_of(outcome.kind)
    mark = _mark(job, count, settings) if "bid" in job and count is not None else None
    if ttl is None:
        if mark is None:
            return outcome
        if hasattr(outcome, "_replace"):
            return outcome._replace(batch=mark)
    write = None
    if ttl is not None:
        if outcome.kind in ("retry", "reschedule"):  # kept while the job waits to run again
            ttl += max(0, math.ceil(outcome.at - time.time()))
        fields = {"status": status, "attempt": str(attempt_of(job))}
        if finished:
            fields["finished_at"] = repr(time.time())
        if outcome.kind == "done":
            fields.update(_value_fields(value))
        elif outcome.new:
            fields["error"] = _error_of(outcome.new)
        write = storage.ResultWrite(jid=str(job.get("jid")), ttl=ttl,
                                    fields=tuple(fields.items()), finished=finished)
    if mark is None and write is None:
        return outcome
    changes = {"result": write, "batch": mark}
    if hasattr(outcome, "_replace"):
        return outcome._replace(**changes)
    import dataclasses

    return dataclasses.replace(outcome, **changes)


def success_mark(job: dict[str, Any], settings: KiqSettings) -> storage.BatchMark | None:
    """What counts ``job`` as succeeded in its batch (and the batch's ancestors), or None if
    it is in none. The processor builds it before a batch job that keeps no result runs, so
    the job's done outcome carries it from the start (most of a batch's drain, µs per job);
    any other outcome goes through :func:`on_outcome`."""
    return _mark(job, "s", settings)


def _mark(job: dict[str, Any], count: str, settings: KiqSettings) -> storage.BatchMark | None:
    """``job``'s outcome ``count`` ("s", "f" or "d") in its batch, or None if it is in none."""
    lineage = batches.lineage_of(job)
    if not lineage:
        return None
    return storage.BatchMark(lineage, str(job.get("jid")), count, settings.batch_ttl)


def requeued_cleanups(job: dict[str, Any], status: str = "queued",
                      settings: KiqSettings | None = None) -> dict[str, Any]:
    """The ``result`` field of a settle entry putting a started ``job`` back to wait, without
    an outcome (cut off by a shutdown, or found orphaned by recovery): its result reads
    ``status`` ("queued", or "retrying" in the retry set) again, in the same step as the move,
    so no worker can have started it since. Empty when the job keeps no result."""
    from .conf import get_settings

    ttl = result_ttl(job, settings or get_settings())
    if ttl is None:
        return {}
    return {"result": storage.ResultWrite(jid=str(job.get("jid")), ttl=ttl,
                                          fields=(("status", status),), finished=False)}


def cancelled_cleanups(job: dict[str, Any],
                       settings: KiqSettings | None = None) -> dict[str, Any]:
    """The ``result``/``batch`` of a waiting ``job`` that ``api.cancel`` removes: its result
    reads "cancelled" (finished: waiters wake) and it counts as failed in its batch, as when a
    worker drops a job cancelled before it started. Empty when it asked for neither."""
    return _ended_cleanups(job, settings, "cancelled", {"status": "cancelled"})


def dead_cleanups(job: dict[str, Any], settings: KiqSettings | None = None) -> dict[str, Any]:
    """The ``result``/``batch`` fields of a settle entry sending ``job`` dead outside the
    processor's run (a poison pill found by orphan recovery or a shutdown's cutoff): counted
    dead in its batch (``on_death``), its result failed. Empty when it asked for neither."""
    return _ended_cleanups(job, settings, "dead", {
        "status": "failed", "attempt": str(attempt_of(job)),
        "error": _error_json(job, backtrace=None)})


def _ended_cleanups(job: dict[str, Any], settings: KiqSettings | None, kind: str,
                    fields: dict[str, str]) -> dict[str, Any]:
    """A job ending as outcome ``kind`` outside a processor's run: its count in its batch
    (``STATUS``) and its result finished with ``fields``. Empty when it asked for neither."""
    from .conf import get_settings

    settings = settings or get_settings()
    if "bid" not in job and "kiq_result_ttl" not in job and settings.result_ttl is None:
        return {}
    cleanups: dict[str, Any] = {}
    count = status_of(kind)[2]
    mark = _mark(job, count, settings) if count is not None else None
    if mark is not None:
        cleanups["batch"] = mark
    ttl = result_ttl(job, settings)
    if ttl is not None:
        fields = {**fields, "finished_at": repr(time.time())}
        cleanups["result"] = storage.ResultWrite(jid=str(job.get("jid")), ttl=ttl,
                                                 fields=tuple(fields.items()), finished=True)
    return cleanups


def _class_of(job: dict[str, Any]) -> str:
    """What the record calls the job: a wrapper's ``display_class`` (a django.tasks task's
    path), else its class."""
    return str(job.get("display_class") or job.get("class", ""))


def _value_fields(value: Any) -> dict[str, str]:
    try:
        return {"value": json.dumps(value, allow_nan=False, ensure_ascii=False)}
    except (TypeError, ValueError) as exc:
        return {"value": "null", "value_error": f"the return value is not JSON: {exc}"}


def _error_of(raw: bytes) -> str:
    try:
        job = json.loads(raw)
    except ValueError:
        return _error_json({}, backtrace=None)
    return _error_json(job, backtrace=job.get("error_backtrace"))


def _error_json(job: dict[str, Any], *, backtrace: Any) -> str:
    """A result record's ``error``: the job hash's error class and message, and
    ``backtrace``."""
    return json.dumps({"class": job.get("error_class", ""),
                       "message": job.get("error_message", ""), "backtrace": backtrace})

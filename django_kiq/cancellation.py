"""Cancelling a job wherever it is: ``django_kiq.api.cancel(jid)``.

Runs in the caller's thread (a view, a shell, the admin). The cancellation is recorded first
(``cancel.lua``), so whatever happens next the job never starts: a worker that fetches it, or
recovers it from a dead process, drops it, and a worker running it has :class:`JobCancelled`
raised in it by its watchdog within a second. Then the job is looked for where it may be: in
progress (the processes' in-progress lists), then where it waits (``api.locate``: the schedule
set, the queues, the retry set); a waiting job is removed, counted in ``stat:cancelled``, its
unique lock released, its result marked "cancelled" and its batch told (a failure there) in one
atomic step. Reads are paged: a million waiting jobs never load into memory.
"""

from __future__ import annotations

import logging

from . import storage, unique, workflows
from .records import JobRecord, decode_record, jid_needle

logger = logging.getLogger("django_kiq.api")


def cancel(jid: str, *, by: str | None = None,
           store: storage.Storage | None = None) -> str | None:
    """Cancel job ``jid``; returns where it was: "queue", "scheduled", "retry", "running", or
    None if it was not found (it finished, or it is between two places: it still never runs).

    ``by`` names who cancelled it (the admin passes the user), for the worker's log line.
    """
    from .api import locate  # the API's search; api re-exports us

    if not isinstance(jid, str) or not jid:
        raise ValueError(f"cancel() needs a jid, not {jid!r}")
    store = store or storage.get_default()
    who = by or ""
    store.record_cancellation(jid, by=who)
    if _running(store, jid):
        logger.info("cancel jid=%s: running; its worker raises JobCancelled in it%s", jid,
                    f" (by {who})" if who else "")
        return "running"
    found = locate(jid, store=store, waiting_only=True)
    if found is None:
        return None
    kind, container = ("list", found.name) if found.place == "queue" else ("zset", found.place)
    if not _remove(store, found.record, kind, container, who):
        return None  # it moved meanwhile: recorded, it still never runs
    return WHERE[found.place]


#: api.locate's places -> what cancel() returns
WHERE = {"queue": "queue", "schedule": "scheduled", "retry": "retry"}


def _running(store: storage.Storage, jid: str) -> bool:
    """In some process's in-progress list: running, about to run, or held by a dead process
    (its recovery then drops it). Read there, not in the Busy data, which lags up to a second."""
    needle = jid_needle(jid)
    return any((needle is None or needle in raw) and decode_record(raw).jid == jid
               for raw in store.in_progress())


def _remove(store: storage.Storage, record: JobRecord, where: str, container: str,
            who: str) -> bool:
    cleanups = {} if record.malformed else workflows.cancelled_cleanups(record.fields)
    removed = store.record_cancellation(record.jid, by=who, where=where, member=record.raw,
                                        container=container, digest=unique.lock_of(record.fields),
                                        record=False, **cleanups)
    if removed:
        logger.info("cancel jid=%s job=%s: removed from %s%s", record.jid, record.display_name,
                    container, f" (by {who})" if who else "")
    return removed

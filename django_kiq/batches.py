"""Batches: a group of jobs tracked as one, with callbacks that fire exactly once.

Sidekiq Pro's semantics. ``with batch(...) as b:`` creates the batch in Redis; every job
enqueued inside the block (in this thread or task: a context variable) carries the batch id
in its hash as ``bid`` and joins the batch in the same Lua step that pushes it (``batch.lua``).
Leaving the block seals the batch (its callbacks are stored as ready payloads); from then on the
worker's settle step counts each job's outcome and fires the callbacks that became due
(``batch_lib.lua``), so a crash can never split a job's outcome from its count, and a job run
twice after a recovery counts once. Callbacks:

- ``on_complete``: every job ran at least once (failures allowed);
- ``on_success``: every job succeeded (after ``on_complete``);
- ``on_death``: a job of the batch went dead (once per batch).

Each is a signature (``notify.s(user_id)``) and receives the batch id as keyword ``batch_id``.
A batch created inside another one is a member of it ("b:<bid>") and counts as done only
once its own callbacks have run (they join the parent). Inside a job of a batch,
``with current_job().batch:`` adds jobs to that batch. Reads: :class:`BatchStatus`
(``django_kiq.api.Batch``). Runs in the enqueueing process; holds no state but the context var.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db import transaction

from . import client, payload, storage
from .conf import KiqSettings, get_settings
from .storage.batches import MAX_DEPTH

if TYPE_CHECKING:
    from types import TracebackType

    from .canvas import Signature

BID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
CALLBACKS = ("success", "complete", "death")
_current: contextvars.ContextVar["Batch | None"] = contextvars.ContextVar("kiq_batch",
                                                                         default=None)


def current() -> "Batch | None":
    """The batch jobs enqueued here join (inside ``with batch()``), or None."""
    return _current.get()


#: bid -> (bid,): the lineage of an un-nested batch's jobs, checked once per bid rather than
#: per job (a worker draining a batch asks for it per job). Cleared when it reaches
#: _KNOWN_MAX bids, so a long-lived worker holds no more than that.
_known: dict[str, tuple[str]] = {}
_KNOWN_MAX = 4096


def lineage_of(job: dict[str, Any]) -> tuple[str, ...]:
    """A job hash's batch, then the batch's ancestors; () if none. Read from Redis: a
    malformed value means no batch (never a key built from junk)."""
    bid = job.get("bid")
    parents = job.get("kiq_parent_bids")
    if not parents:  # most jobs: no nesting (checked first: a worker runs this per job)
        known = _known.get(bid) if type(bid) is str else None
        if known is None and isinstance(bid, str) and BID.match(bid):
            if len(_known) >= _KNOWN_MAX:
                _known.clear()
            known = _known[bid] = (bid,)
        return known or ()
    if not isinstance(bid, str) or not BID.match(bid):
        return ()
    if not isinstance(parents, list) or len(parents) >= MAX_DEPTH or not all(
            isinstance(p, str) and BID.match(p) for p in parents):
        return (bid,)
    return (bid, *parents)


class Batch:
    """``with batch(description=..., on_success=sig, on_complete=sig, on_death=sig) as b:``."""

    def __init__(self, *, description: str = "", on_success: "Signature | None" = None,
                 on_complete: "Signature | None" = None, on_death: "Signature | None" = None,
                 bid: str | None = None):
        from .canvas import Signature

        callbacks = {"success": on_success, "complete": on_complete, "death": on_death}
        for which, sig in callbacks.items():
            if sig is not None and not isinstance(sig, Signature):
                raise TypeError(f"batch on_{which} takes a signature (job.s(...)), not "
                                f"{type(sig).__name__}")
        if not isinstance(description, str):
            raise TypeError("batch description must be a string")
        if bid is not None and not BID.match(bid):
            raise ValueError(f"batch id {bid!r}: letters, digits, '_', '.', '-' (at most 64)")
        self.bid = bid or payload.new_jid()
        self.description = description
        self.callbacks = callbacks
        self.ancestors: tuple[str, ...] = ()
        self._joined = False  # an existing batch re-entered (current_job().batch): no seal
        self._token: contextvars.Token | None = None

    @classmethod
    def joining(cls, lineage: Sequence[str]) -> "Batch":
        """The handle of an existing batch (a running job's own): jobs enqueued inside its
        block join it; leaving the block does not seal it again."""
        handle = cls(bid=lineage[0])
        handle.ancestors = tuple(lineage[1:])
        handle._joined = True
        return handle

    def __repr__(self) -> str:
        return f"<Batch {self.bid} {self.description!r}>"

    # -- the block ---------------------------------------------------------------------------

    def __enter__(self) -> "Batch":
        if self._token is not None:
            raise RuntimeError(f"{self!r} is already open")
        if not self._joined:
            parent = _current.get()
            if parent is not None:
                self.ancestors = (parent.bid, *parent.ancestors)
                if len(self.ancestors) >= MAX_DEPTH:
                    raise ValueError(f"batches nest at most {MAX_DEPTH} deep")
            settings = get_settings()
            storage.get_default().batch_write(
                self.bid, ancestors=self.ancestors, ttl=settings.batch_ttl,
                create={"bid": self.bid, "description": self.description,
                        "created_at": repr(time.time()),
                        "parent": self.ancestors[0] if self.ancestors else ""})
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._token is not None  # __enter__ set it
        _current.reset(self._token)
        self._token = None
        if self._joined:
            return
        settings = get_settings()
        if settings.enqueue_on_commit and transaction.get_connection().in_atomic_block:
            # The block's pushes wait for the commit: the seal must come after them (on_commit
            # runs in order); a rollback pushes nothing and the batch stays open, unsealed.
            transaction.on_commit(lambda: self.seal(settings))
        else:
            self.seal(settings)

    def seal(self, settings: KiqSettings | None = None) -> None:
        """Store the callbacks and let the batch complete (``__exit__`` calls it)."""
        settings = settings or get_settings()
        stored, jobs = [], []
        for which, sig in self.callbacks.items():
            if sig is None:
                continue
            job = sig.job_hash(extra_kwargs={"batch_id": self.bid}, settings=settings,
                               lineage=self.ancestors)
            job = client.client_chain(settings)(job)
            if job is None:  # a client middleware dropped the callback
                continue
            raw = payload.encode(payload.for_schedule(job))
            client.check_size(job, settings, raw)
            stored.append((which, job["jid"], raw))
            jobs.append(job)
        store = storage.get_default()
        store.batch_write(self.bid, ancestors=self.ancestors, ttl=settings.batch_ttl, seal=stored)
        from . import workflows

        # A callback that keeps its result reads "scheduled" until it runs.
        workflows.record_enqueued(store, jobs, settings, time.time(), callbacks=True)

    # -- the writer of the jobs enqueued inside the block ------------------------------------

    def stamp(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            job["bid"] = self.bid
            if self.ancestors:
                job["kiq_parent_bids"] = list(self.ancestors)

    checks_size = True

    def __call__(self, jobs: list[dict[str, Any]],
                 settings: KiqSettings) -> list[str | None] | None:
        """The enqueue pipeline's writer: each job joins the batch as it is pushed."""
        store, now = storage.get_default(), time.time()
        pushes = []
        limit, push = settings.max_payload_bytes, storage.BatchPush
        for job in jobs:
            at, queue = job.get("at"), job.get("queue")
            if at is None and type(queue) is str and queue:
                # Due now (most jobs): payload.ready_for_queue's result, in place (these hashes
                # are the pipeline's own), as the plain writer does (client.plan_writes).
                job["enqueued_at"] = now
                raw = payload.encode(job)
                pushes.append(push(job["jid"], raw, queue))
            elif at is not None and at > now:
                raw = payload.encode(payload.for_schedule(job))
                pushes.append(push(job["jid"], raw, at=at))
            else:
                ready = payload.ready_for_queue(job, now)
                raw = payload.encode(ready)
                pushes.append(push(job["jid"], raw, ready["queue"]))
            if len(raw) > limit:
                client.check_size(job, settings, raw)
        try:
            for start in range(0, len(pushes), storage.store.PUSH_BATCH):
                store.batch_write(self.bid, ttl=settings.batch_ttl,
                                  jobs=pushes[start:start + storage.store.PUSH_BATCH])
        except storage.RedisError as exc:
            raise client.EnqueueError(f"could not enqueue {len(jobs)} job(s) into batch "
                                      f"{self.bid}: Redis error: {exc}",
                                      jid=jobs[0]["jid"]) from exc
        from . import workflows

        workflows.record_enqueued(store, jobs, settings, now)
        return None


batch = Batch


def join_current(jobs: list[dict[str, Any]], options: Any) -> "Batch | None":
    """Called by the client for every enqueue: inside a batch block, stamp the jobs and return
    the batch (the writer to use); else None (one context-variable read)."""
    current_batch = _current.get()
    if current_batch is None:
        return None
    if options.unique_for is not None:
        raise TypeError("a unique job (unique_for) cannot join a batch")
    current_batch.stamp(jobs)
    return current_batch


class BatchStatus:
    """A batch's state as Redis has it now (``django_kiq.api.Batch(bid)``)."""

    def __init__(self, bid: str, info: dict[str, Any] | None = None):
        self.bid = bid
        info = info if info is not None else storage.get_default().batch_info(bid)
        self.exists = info is not None
        info = info or {}
        self.description = str(info.get("description", ""))
        self.parent = str(info.get("parent", "")) or None
        self.total = _int(info.get("total"))
        self.pending = _int(info.get("pending"))
        self.failures = _int(info.get("failed"))
        self.dead = _int(info.get("dead"))
        self.sealed = info.get("sealed") == "1"
        self.created_at = _float(info.get("created_at"))
        self.completed_at = _float(info.get("complete_at"))
        self.succeeded_at = _float(info.get("success_at"))
        self.died_at = _float(info.get("died_at"))
        self.callbacks: dict[str, dict[str, Any]] = {
            which: {"defined": f"cb_{which}" in info,
                    "fired_at": _float(info.get(f"fired_{which}")),
                    "jid": str(info.get(f"cbjid_{which}", "")) or None}
            for which in CALLBACKS}

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    @property
    def succeeded(self) -> bool:
        return self.succeeded_at is not None

    @property
    def done(self) -> int:
        return max(0, self.total - self.pending)

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else int(100 * self.done / self.total)

    def pending_jids(self, limit: int = 1000) -> list[str]:
        return storage.get_default().batch_members(self.bid, "pending", limit)

    def failed_jids(self, limit: int = 1000) -> list[str]:
        return storage.get_default().batch_members(self.bid, "failed", limit)

    def dead_jids(self, limit: int = 1000) -> list[str]:
        return storage.get_default().batch_members(self.bid, "dead", limit)

    def retry_failed(self) -> int:
        """Move the batch's failed jobs waiting in the retry set to their queues now."""
        from .api import RetrySet

        jids = {j for j in self.failed_jids(100_000) if not j.startswith("b:")}
        if not jids:
            return 0
        # One scan of the retry set for members naming the bid (ZSCAN MATCH), not one per jid.
        retries = RetrySet()
        found = [record for record in retries.filter(self.bid, limit=len(jids) * 2 + 100)
                 if record.jid in jids and record.fields.get("bid") == self.bid]
        return retries.retry_now(found)


def recent(start: int = 0, count: int = 25) -> tuple[int, list[BatchStatus]]:
    """(how many batches are listed, the newest from ``start``), for the admin."""
    store = storage.get_default()
    total, bids = store.recent_batches(start, count)
    return total, [BatchStatus(b, store.batch_info(b)) for b in bids]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

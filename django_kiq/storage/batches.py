"""Storage verbs of workflows: job results (``@job(result_ttl=...)``) and batches.

A mixin of :class:`~django_kiq.storage.store.Storage` (methods use ``self.client``,
``self.keys`` and ``self._script``); it holds no state. Called from the enqueueing thread
(batches created, jobs pushed into them, sealed), a worker's processor threads (a result's
start, progress) and readers (``django_kiq.results``, ``django_kiq.api.Batch``, the admin).
What ends with a job (its result, its batch's counters and callbacks) is not written here but
in the job's own settle step: :meth:`workflow_settle_args` gives ``settle.lua`` the keys and
values of :class:`ResultWrite` and :class:`BatchMark`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .base import StorageBase
from .connection import SOCKET_TIMEOUT

#: At most this many ancestors of a batch are tracked (nesting deeper is refused).
MAX_DEPTH = 8
#: Seconds one blocking wait for a result may last: well under the connections' socket
#: timeout, which a longer block would trip.
MAX_BLOCK = SOCKET_TIMEOUT / 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultWrite:
    """A job's result record, written in the step that settles the job."""

    jid: str
    ttl: int
    fields: tuple[tuple[str, str], ...]
    finished: bool  # True: wake the waiters (JobResult.wait)


class BatchMark(NamedTuple):
    """A job's outcome counted in its batch (and, through it, in the batch's ancestors).

    A tuple, not a frozen dataclass: the worker builds one per job of a batch, and a tuple
    builds in a third of the time."""

    bids: tuple[str, ...]  # the job's batch, then its parent, grandparent...
    member: str  # the jid
    outcome: str  # "s" succeeded, "f" failed (retries or not), "d" died
    ttl: int  # batch data lives this long after completion


class Succeeded(NamedTuple):
    """A settle entry for a done job whose only cleanup is its success in its batch (most of
    a batch's drain): its payload leaves the in-progress list and its jid is counted
    (settle.lua's batch groups). A tuple, not a dataclass: the worker builds one per job, and
    it builds in a quarter of the time of a :class:`~django_kiq.storage.Settle`."""

    old: bytes
    batch: BatchMark


class BatchPush(NamedTuple):
    """One job pushed into a batch: onto its queue, or into the schedule set at ``at``.

    A tuple, not a frozen dataclass: ``enqueue_many`` inside a batch builds one per job."""

    jid: str
    raw: bytes
    queue: str = ""
    at: float | None = None


def _runs(jobs: Sequence[BatchPush]) -> list[tuple[str | None, list[BatchPush]]]:
    """``jobs`` as runs of consecutive pushes to one destination, in order: (queue name, or
    None for the schedule set, the run's jobs). Most calls are one run."""
    return [(where, list(run)) for where, run in
            itertools.groupby(jobs, key=lambda push: push.queue if push.at is None else None)]


def _flat(fields: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[str]:
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    return [item for pair in pairs for item in pair]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def result_write_commands(pipe: Any, keys: Any,
                          items: Sequence[tuple[str, Mapping[str, str], int]], *,
                          status_if_new: bool) -> None:
    """Queue on ``pipe`` (sync or asyncio: its commands only buffer) the writes of result
    records: each (jid, fields, ttl) item's fields, and its TTL refreshed.

    ``status_if_new``: a "queued"/"scheduled" record written after the push (the client's):
    its ``status`` is set only where the record has none (HSETNX), so a worker that started
    or even finished the job in between keeps its own."""
    for jid, fields, ttl in items:
        key = keys.job_result(jid)
        rest = dict(fields)
        if status_if_new and "status" in rest:
            pipe.hsetnx(key, "status", rest.pop("status"))
        if rest:
            pipe.hset(key, mapping=rest)
        pipe.expire(key, max(1, int(ttl)))


class BatchOps(StorageBase):
    def _register_batch_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""
        self._batch = self._script("batch")

    # -- settle (see settle.lua's "r" and "b" cleanups) ----------------------------------------

    def workflow_settle_args(self, result: ResultWrite | None,
                             batch: BatchMark | None) -> tuple[list[str], list, str]:
        keys: list[str] = []
        args: list = []
        flags = ""
        if result is not None:
            flags += "r"
            keys += [self.keys.job_result(result.jid), self.keys.job_result_done(result.jid)]
            args += [result.ttl, "1" if result.finished else "0", len(result.fields),
                     *_flat(result.fields)]
        if batch is not None:
            flags += "b"
            keys.append(self.keys.schedule)
            for bid in batch.bids:
                keys += self._batch_keys(bid)
            args += [batch.outcome, batch.member, len(batch.bids), batch.ttl]
        return keys, args, flags

    def batch_done_args(self, entries: Sequence[tuple[int, Any]],
                        ) -> tuple[list[str], list, list[int]]:
        """settle.lua's batch groups for ``entries`` ((position, entry) of done jobs whose
        only cleanup is their success in a batch: a :class:`Succeeded` or the like): their
        keys and arguments, and the positions in the order settle.lua answers for them. Per
        group (jobs of one batch) the batch's keys once, per job only its payload and jid."""
        # (bids, ttl) -> (positions, [payload, jid, payload, jid...]): built in one pass, as
        # the fetcher's pass of a batch's drain sends tens of these per round trip.
        groups: dict[tuple[tuple[str, ...], int], tuple[list[int], list]] = {}
        for position, e in entries:
            mark = e.batch
            group = groups.get((mark.bids, mark.ttl))
            if group is None:
                group = groups[(mark.bids, mark.ttl)] = ([], [])
            group[0].append(position)
            group[1].extend((e.old, mark.member))
        keys: list[str] = [self.keys.schedule] if groups else []
        args: list = [len(groups)]
        order: list[int] = []
        for (bids, ttl), (positions, members) in groups.items():
            for bid in bids:
                keys += self._batch_keys(bid)
            args += [len(bids), ttl, len(positions)]
            args += members
            order += positions
        return keys, args, order

    def _batch_keys(self, bid: str) -> list[str]:
        k = self.keys
        return [k.batch(bid), k.batch_set(bid, "pending"), k.batch_set(bid, "failed"),
                k.batch_set(bid, "dead")]

    # -- batches: create, push, seal (batch.lua) -----------------------------------------------

    def batch_write(self, bid: str, *, ancestors: Sequence[str] = (), ttl: int,
                    create: Mapping[str, str] | None = None, only_new: bool = False,
                    jobs: Sequence[BatchPush] = (),
                    seal: Sequence[tuple[str, str, bytes]] | None = None) -> bool:
        """Create the batch (``create``: its hash fields), push ``jobs`` into it, and/or seal
        it with ``seal``'s (which, jid, payload) callbacks: one atomic step.

        ``only_new`` with ``create``: do nothing and return False if the batch exists (so a
        retried workflow step writes its batch once).
        """
        if create is None and seal is None and jobs and self.multi_spans_queues:
            self._batch_push(bid, ttl, jobs)
            return True
        k = self.keys
        keys = [*self._batch_keys(bid), k.batches, k.queues, k.schedule]
        for ancestor in ancestors:
            keys += self._batch_keys(ancestor)
        flags = ("c" if create is not None else "") + ("x" if only_new else "") + (
            "s" if seal is not None else "")
        args: list = [flags, len(ancestors), ttl, len(create or {}), *_flat(create or {})]
        args += [len(seal or ()), *[v for cb in (seal or ()) for v in cb]]
        # The jobs as runs (see _runs): a run's key and name once, then its jobs.
        runs = _runs(jobs)
        args.append(len(runs))
        for where, run in runs:
            if where is None:
                keys.append(k.schedule)
                args += ("z", "", len(run))
                for push in run:
                    args += (push.jid, repr(float(push.at or 0)), push.raw)
            else:
                keys.append(k.queue(where))
                args += ("q", where, len(run))
                for push in run:
                    args += (push.jid, push.raw)
        return int(self._batch(keys=keys, args=args)) == 1

    def _batch_push(self, bid: str, ttl: int, jobs: Sequence[BatchPush]) -> None:
        """Push ``jobs`` into the batch in one MULTI: what batch.lua does for jobs alone, as
        plain commands (no condition decides any of them), without the script's copy of every
        argument into Lua: about half the batch's enqueue cost on the Redis side. Jobs keep
        their order: one LPUSH (per 1,000) or ZADD per run (see _runs)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        queues: set[str] = set()
        for where, run in _runs(jobs):
            if where is None:
                pipe.zadd(k.schedule, {push.raw: float(push.at or 0) for push in run})
                continue
            queues.add(where)
            for start in range(0, len(run), 1000):
                pipe.lpush(k.queue(where), *[push.raw for push in run[start:start + 1000]])
        if queues:
            pipe.sadd(k.queues, *queues)
        pending = k.batch_set(bid, "pending")
        jids = [push.jid for push in jobs]
        for start in range(0, len(jids), 1000):
            pipe.sadd(pending, *jids[start:start + 1000])
        pipe.hincrby(k.batch(bid), "total", len(jids))
        pipe.expire(pending, ttl)
        pipe.execute()

    # -- batches: reading ----------------------------------------------------------------------

    def batch_info(self, bid: str) -> dict[str, str | int] | None:
        """The batch hash's fields plus ``pending``/``failed``/``dead`` counts, or None."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.batch(bid))
        for name in ("pending", "failed", "dead"):
            pipe.scard(self.keys.batch_set(bid, name))
        flat, pending, failed, dead = pipe.execute()
        if not flat:
            return None
        info: dict[str, str | int] = {_text(a): _text(b) for a, b in flat.items()}
        info.update(pending=pending, failed=failed, dead=dead)
        return info

    def batch_members(self, bid: str, name: str, limit: int = 1000) -> list[str]:
        """Up to ``limit`` members of one of the batch's sets, sorted."""
        key = self.keys.batch_set(bid, name)
        members = []
        for member in self.client.sscan_iter(key, count=max(limit, 100)):
            members.append(_text(member))
            if len(members) >= limit:
                break
        return sorted(members)

    def recent_batches(self, start: int = 0, count: int = 25) -> tuple[int, list[str]]:
        """(how many batches the index lists, bids newest first from ``start``)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.batches)
        pipe.zrevrange(self.keys.batches, start, start + count - 1)
        total, bids = pipe.execute()
        return total, [_text(b) for b in bids]

    # -- job results ---------------------------------------------------------------------------

    def write_job_results(self, items: Sequence[tuple[str, Mapping[str, str], int]], *,
                          status_if_new: bool = False) -> None:
        """Set fields of result records ((jid, fields, ttl) each) and refresh their TTLs, in
        one round trip (:func:`result_write_commands` says what ``status_if_new`` does)."""
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        result_write_commands(pipe, self.keys, items, status_if_new=status_if_new)
        pipe.execute()

    def start_job_result(self, jid: str, fields: Mapping[str, str], ttl: int) -> None:
        """Record an attempt's start: set ``fields`` and, on the first attempt only,
        ``started_at`` (the time of the attempt's ``last_attempted_at``); refresh the TTL."""
        key = self.keys.job_result(jid)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.hsetnx(key, "started_at", fields.get("last_attempted_at", ""))
        pipe.expire(key, max(1, int(ttl)))
        pipe.execute()

    def job_result(self, jid: str) -> dict[str, str] | None:
        flat = self.client.hgetall(self.keys.job_result(jid))
        return {_text(a): _text(b) for a, b in flat.items()} if flat else None

    def wait_job_result(self, jid: str, timeout: float) -> bool:
        """Block until the job's "done" list has an element (it finished), up to ``timeout``
        or MAX_BLOCK seconds, whichever is shorter (False: not finished by then).

        BLMOVE from the list onto its own end leaves the element there, so every waiter wakes,
        and one that starts waiting after the job finished returns at once. No polling.
        """
        key = self.keys.job_result_done(jid)
        # One BLMOVE blocks at most MAX_BLOCK: past the connection's socket timeout, redis-py
        # would give up on the reply and raise (the caller loops until its own deadline).
        # redis-py types the timeout int; BLMOVE takes fractional seconds (Redis >= 6).
        return self.client.blmove(key, key, min(timeout, MAX_BLOCK),  # type: ignore[arg-type]
                                  "RIGHT", "RIGHT") is not None

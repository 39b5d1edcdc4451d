"""The read/manage API: see and act on queues, job sets, processes, stats and metrics.

Used by the admin, shells and scripts, in whatever thread calls it; every object is a thin
handle over the storage layer (``storage.get_default()`` unless ``store=`` is given) and holds no
state besides its name, except :class:`Stats`, a snapshot read at construction. All paging
happens in Redis. A :class:`JobRecord` keeps the exact member bytes, so deleting or moving it
acts on that very member and never rewrites a job by accident.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ClassVar

from . import payload, storage, workflows
from .cancellation import cancel
from .controls import (Checkpoint, UniqueLock, checkpoint, expires_at_of, lock_pair,
                       timeout_of, unique_lock)
from .batches import BatchStatus as Batch  # noqa: F401 - api.Batch(bid): a batch's status
from .exceptions import MalformedPayload
from .limits import LimitRecord, records as limits, reset as reset_limit
from .records import (DEFAULT_QUEUE, JobMetrics, JobRecord, Location, ProcessRecord,
                      QueueState, SearchPage, WorkRecord, decode_record, jid_needle, job_metrics,
                      member_digest, parse_key, parse_queue_key, process_record, queue_key)

__all__ = ["cancel", "unique_lock", "checkpoint", "timeout_of", "expires_at_of", "UniqueLock",
           "Checkpoint", "Stats", "Queue", "JobSet", "ScheduledSet", "RetrySet", "DeadSet",
           "ProcessSet", "Metrics", "JobRecord", "SearchPage", "ProcessRecord", "WorkRecord",
           "JobMetrics", "QueueState", "decode_record", "limits", "reset_limit", "LimitRecord",
           "locate", "Location"]

PAGE = 25
SCAN_PAGE = 1000  # members per LRANGE / ZSCAN step while searching
SEARCH_BUDGET = 20_000  # members one search() step scans at most (about 100 ms of Redis)
BATCH = 1000  # members moved per Lua call by retry_all / kill_all


def _latency(oldest: bytes | None, now: float | None) -> float:
    if oldest is None:
        return 0.0
    record = decode_record(oldest)
    since = record.enqueued_at or record.created_at
    if since is None:
        return 0.0
    return max(0.0, (time.time() if now is None else now) - since)


def _requeue_plan(raw: bytes, now: float) -> tuple[bytes, bytes, str] | None:
    """(old member, payload to push, queue) for one entry moved to its queue; None if malformed.

    Python's json round trip keeps every number and key as it was (cjson in Lua would not).
    ``retry_count`` is kept; ``payload.ready_for_queue`` drops ``at``, stamps ``enqueued_at``
    and names the queue.
    """
    try:
        job = payload.ready_for_queue(payload.decode(raw), now, default_queue=DEFAULT_QUEUE)
    except MalformedPayload:
        return None
    return raw, payload.encode(job), job["queue"]


def _leaving(record: JobRecord) -> storage.Leaving | None:
    """What goes with a job deleted or killed here: its unique lock (if it still holds it)
    and, for a job of a batch, its count as dead there (as any other way to dead)."""
    lock = lock_pair(record)
    mark = None if record.malformed else workflows.dead_cleanups(record.fields).get("batch")
    return storage.Leaving(lock=lock, mark=mark) if lock or mark else None


def _leaving_of(raw: bytes) -> storage.Leaving | None:
    """:func:`_leaving` of a member's bytes (the storage layer's callback on bulk actions)."""
    return _leaving(decode_record(raw))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def _days(days: int, now: float | None) -> list[dt.date]:
    """The last ``days`` UTC days up to the day of ``now``, oldest first."""
    today = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date()
    return [today - dt.timedelta(days=i) for i in range(days - 1, -1, -1)]


# -- stats ------------------------------------------------------------------------------------

class Stats:
    """The summary bar: counters and sizes, read at construction in one MULTI, so they agree.

    What a page shows beside the bar can come from the same read: ``queues=True`` fills
    ``queues`` (every registered or paused queue, plus ``extra_queues``, as :class:`QueueState`),
    ``processes=True`` fills ``processes`` (as :meth:`ProcessSet.list` gives them) and
    ``history_days=n`` fills ``daily`` (as :meth:`history` gives it). Unrequested ones are None.
    """

    def __init__(self, *, store: storage.Storage | None = None, now: float | None = None,
                 queues: bool = False, extra_queues: Sequence[str] = (),
                 processes: bool = False, history_days: int = 0):
        days = _days(history_days, now) if history_days > 0 else []
        snap = (store or storage.get_default()).stats_snapshot(
            DEFAULT_QUEUE, queues=queues, extra_queues=extra_queues, processes=processes,
            days=days)
        self.processed: int = snap["processed"]
        self.failed: int = snap["failed"]
        self.cancelled: int = snap["cancelled"]  # stat:cancelled: jobs cancelled (api.cancel)
        self.expired: int = snap["expired"]  # stat:expired: jobs dropped by their expires_in
        self.enqueued: int = snap["enqueued"]
        self.busy: int = snap["busy"]
        self.scheduled_size: int = snap["scheduled_size"]
        self.retry_size: int = snap["retry_size"]
        self.dead_size: int = snap["dead_size"]
        self.processes_size: int = snap["processes_size"]
        self.default_queue_latency: float = _latency(snap["default_oldest"], now)
        self.queues: list[QueueState] | None = None if not queues else [
            QueueState(name=name, size=size, latency=_latency(oldest, now), paused=paused)
            for name, (size, oldest, paused) in sorted(snap["queue_states"].items())]
        self.processes: list[ProcessRecord] | None = None if not processes else [
            process_record(*state) for state in snap["process_states"]]
        self.daily: list[tuple[dt.date, int, int]] | None = None if not days else [
            (day, p, f) for day, (p, f) in zip(days, snap["daily"])]

    def queue(self, name: str) -> QueueState | None:
        """The state of one queue read by this snapshot (``queues=True``), or None."""
        return next((q for q in self.queues or () if q.name == name), None)

    @classmethod
    def history(cls, days: int, now: float | None = None, *,
                store: storage.Storage | None = None) -> list[tuple[dt.date, int, int]]:
        """(UTC day, processed, failed) for the last ``days`` days, oldest first (one MGET)."""
        dates = _days(days, now)
        counts = (store or storage.get_default()).daily_stats(dates)
        return [(day, p, f) for day, (p, f) in zip(dates, counts)]

    @classmethod
    def redis_info(cls, *, store: storage.Storage | None = None) -> dict:
        info = (store or storage.get_default()).server_info()
        names = ("redis_version", "uptime_in_days", "connected_clients", "used_memory_human",
                 "used_memory_peak_human", "maxmemory_policy")
        return {name: info.get(name) for name in names}


# -- queues -----------------------------------------------------------------------------------

class Queue:
    """A queue list: jobs are pushed on the left and run from the right."""

    def __init__(self, name: str, *, store: storage.Storage | None = None):
        self.name = name
        self._store = store or storage.get_default()

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    @classmethod
    def all(cls, *, store: storage.Storage | None = None) -> list[Queue]:
        """Every registered queue and every paused one (even empty: it still needs a Resume)."""
        store = store or storage.get_default()
        return [cls(name, store=store) for name in store.queue_names()]

    def size(self) -> int:
        return self._store.queue_size(self.name)

    def latency(self, now: float | None = None) -> float:
        """Seconds the next job to run has waited (0 when the queue is empty)."""
        return _latency(self._store.queue_oldest(self.name), now)

    def jobs(self, offset: int = 0, limit: int = PAGE) -> list[JobRecord]:
        """A page of jobs in run order: the next to run first. Each record's ``key`` names
        that very entry (see :meth:`get`)."""
        if limit <= 0 or offset < 0:
            return []
        raws = self._store.queue_range(self.name, -(offset + limit), -(offset + 1))
        return [_queued(raw, offset + i) for i, raw in enumerate(reversed(raws))]

    def get(self, key: str) -> JobRecord | None:
        """The entry a record's ``key`` names (its exact bytes), wherever it moved since.

        Looks around the position the key remembers first (one LRANGE), then scans the list;
        None if no member has those bytes any more. ValueError for a malformed key.
        """
        position, digest = parse_queue_key(key)
        # Run-order index i is list index -(i + 1): the window covers positions around the hint.
        low = max(0, position - SCAN_PAGE // 2)
        raws = self._store.queue_range(self.name, -(low + SCAN_PAGE), -(low + 1))
        for i, raw in enumerate(reversed(raws)):
            if member_digest(raw) == digest:
                return _queued(raw, low + i)
        found = self._scan(lambda raw: member_digest(raw) == digest)
        return found and _queued(*found)

    def find(self, jid: str) -> JobRecord | None:
        """The first job (from the newest end) whose jid is ``jid``, or None."""
        needle = jid_needle(jid)
        found = self._scan(lambda raw: (needle is None or needle in raw)
                           and decode_record(raw).jid == jid)
        return found and _queued(*found)

    def _scan(self, match: Callable[[bytes], bool]) -> tuple[bytes, int] | None:
        """(member, run-order position) of the first member ``match`` accepts, or None.

        Reads a page at a time from the newest end: consumers take from the other end, so
        pops do not shift the pages still to read.
        """
        start = 0
        while True:
            raws = self._store.queue_range(self.name, start, start + SCAN_PAGE - 1)
            for i, raw in enumerate(raws):
                if match(raw):
                    return raw, max(0, self.size() - 1 - (start + i))
            if len(raws) < SCAN_PAGE:
                return None
            start += SCAN_PAGE

    def delete(self, jid_or_record: str | JobRecord) -> bool:
        """Remove one member with exactly the record's bytes (a jid: the first job :meth:`find`
        finds). True if it was still there. A unique job's lock goes with it; a job of a
        batch counts as dead in it (docs/workflows.md)."""
        record = (jid_or_record if isinstance(jid_or_record, JobRecord)
                  else self.find(jid_or_record))
        return record is not None and self._store.queue_remove(
            self.name, record.raw, _leaving(record)) > 0

    def clear(self) -> int:
        """Delete every job and forget the queue; returns how many jobs it held. The locks
        its unique jobs held are released; its batch jobs count as dead in their batches."""
        return self._store.queue_clear(self.name, _leaving_of)

    @property
    def paused(self) -> bool:
        return self._store.queue_paused(self.name)

    def pause(self) -> None:
        self._store.pause_queue(self.name)

    def resume(self) -> None:
        self._store.resume_queue(self.name)


def _queued(raw: bytes, position: int) -> JobRecord:
    return dataclasses.replace(decode_record(raw), key=queue_key(position, raw))


# -- job sets ---------------------------------------------------------------------------------

class JobSet:
    """A sorted set of jobs (score = run-at or death time). Actions take keys or records and
    return how many entries they acted on; an entry someone else moved first is not counted."""

    name: ClassVar[str]
    newest_first: ClassVar[bool] = False
    can_kill: ClassVar[bool] = True

    def __init__(self, *, store: storage.Storage | None = None):
        self._store = store or storage.get_default()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def size(self) -> int:
        return self._store.set_size(self.name)

    def jobs(self, offset: int = 0, limit: int = PAGE) -> list[JobRecord]:
        if limit <= 0 or offset < 0:
            return []
        rows = self._store.set_range(self.name, offset, offset + limit - 1,
                                     reverse=self.newest_first)
        return [decode_record(raw, score) for raw, score in rows]

    def get(self, key: str) -> JobRecord | None:
        score, jid = parse_key(key)
        offset = 0
        while rows := self._store.set_at_score(self.name, score, offset, SCAN_PAGE):
            for raw, at in rows:
                record = decode_record(raw, at)
                if record.jid == jid:
                    return record
            offset += len(rows)
        return None

    def find(self, jid: str) -> JobRecord | None:
        needle = jid_needle(jid)
        pattern = "*" if needle is None else f"*{_glob_escape(jid)}*"
        for raw, score in self._scan(pattern):
            record = decode_record(raw, score)
            if record.jid == jid:
                return record
        return None

    def filter(self, substring: str, limit: int = 100) -> list[JobRecord]:
        """Entries whose raw JSON contains ``substring`` (case-sensitive), at most ``limit``."""
        found: list[JobRecord] = []
        for raw, score in self._scan(f"*{_glob_escape(substring)}*") if limit > 0 else ():
            found.append(decode_record(raw, score))
            if len(found) >= limit:
                break
        found.sort(key=lambda r: r.score or 0.0, reverse=self.newest_first)
        return found

    def search(self, substring: str, *, cursor: int = 0, limit: int = 25,
               budget: int = SEARCH_BUDGET) -> SearchPage:
        """One bounded step of a substring search, for pages that must answer quickly.

        Scans about ``budget`` members from ``cursor`` (ZSCAN), stopping early once ``limit``
        matches are found; the returned ``cursor`` continues the search (0 = the whole set was
        searched). A filter over a million entries thus costs each request a bounded amount of
        Redis time instead of a full scan.
        """
        pattern = f"*{_glob_escape(substring)}*"
        found: dict[bytes, float] = {}
        scanned = 0
        while True:
            cursor, rows = self._store.set_scan(self.name, cursor, pattern, SCAN_PAGE)
            scanned += SCAN_PAGE
            for raw, score in rows:
                found.setdefault(raw, score)
            if cursor == 0 or len(found) >= limit or scanned >= budget:
                break
        records = sorted((decode_record(raw, score) for raw, score in found.items()),
                         key=lambda r: r.score or 0.0, reverse=self.newest_first)
        return SearchPage(records=records, cursor=int(cursor), scanned=scanned)

    def _scan(self, pattern: str) -> Iterator[tuple[bytes, float]]:
        cursor, seen = 0, set()
        while True:
            cursor, rows = self._store.set_scan(self.name, cursor, pattern, SCAN_PAGE)
            for raw, score in rows:
                if raw not in seen:  # ZSCAN may return a member twice
                    seen.add(raw)
                    yield raw, score
            if cursor == 0:
                return

    def _resolve(self, items: Iterable[str | JobRecord]) -> list[JobRecord]:
        if isinstance(items, (str, JobRecord)):
            items = [items]
        records = []
        for item in items:
            record = item if isinstance(item, JobRecord) else self.get(item)
            if record is not None:
                records.append(record)
        return records

    # entry actions

    def retry_now(self, items: Iterable[str | JobRecord], now: float | None = None) -> int:
        """Push entries onto their queue now (``enqueued_at`` = now, ``retry_count`` kept).
        Malformed entries cannot run and stay where they are."""
        now = time.time() if now is None else now
        plans = [_requeue_plan(r.raw, now) for r in self._resolve(items)]
        return sum(self._store.set_to_queues(self.name, [p for p in plans if p]))

    def enqueue_now(self, items: Iterable[str | JobRecord], now: float | None = None) -> int:
        return self.retry_now(items, now)

    def delete(self, items: Iterable[str | JobRecord]) -> int:
        """Remove entries; a unique job's lock goes with it (if it still holds it), a job of a
        batch counts as dead in it."""
        records = self._resolve(items)
        return self._store.set_remove(self.name, [r.raw for r in records],
                                      [_leaving(r) for r in records])

    def kill(self, items: Iterable[str | JobRecord], now: float | None = None) -> int:
        """Move entries, byte for byte, to the dead set (score = now), which is then trimmed.
        A dead job holds no unique lock: each is released in the same step, and a job of a
        batch counts as dead in it."""
        self._check_kill()
        now = time.time() if now is None else now
        records = self._resolve(items)
        return self._store.set_kill(self.name, [r.raw for r in records], now,
                                    [_leaving(r) for r in records])

    def _check_kill(self) -> None:
        if not self.can_kill:
            raise TypeError(f"{type(self).__name__} has no kill: its jobs are dead already")

    # set-wide actions, in batches of BATCH per round trip

    def retry_all(self, now: float | None = None) -> int:
        """Push every well-formed entry onto its queue, server-side, BATCH per call; malformed
        entries stay in the set. Members move byte for byte except for a fresh ``enqueued_at``
        (see set_requeue_batch.lua). Bounded by the size at the start, so jobs added meanwhile
        cannot keep it looping."""
        queues = {*self._store.queue_names(), DEFAULT_QUEUE}
        moved = skipped = 0
        budget = self.size()
        while budget > 0:
            stamp = time.time() if now is None else now
            done, bad, unknown = self._store.set_requeue_batch(
                self.name, sorted(queues), skipped, BATCH, stamp)
            moved, skipped, budget = moved + done, skipped + bad, budget - done - bad
            if unknown is not None:
                queues.add(unknown)  # a queue not registered yet: call again with its key
            elif done + bad < BATCH:
                break
        return moved

    def enqueue_all(self, now: float | None = None) -> int:
        return self.retry_all(now)

    def delete_all(self) -> int:
        """Delete every entry; the locks its unique jobs held are released, its batch jobs
        count as dead in their batches (once: a dead job counted already is not again)."""
        return self._store.set_clear(self.name, _leaving_of)

    def kill_all(self, now: float | None = None) -> int:
        """Move every entry (malformed ones too), byte for byte, to the dead set. Unique and
        batch jobs go first, found by Redis (ZSCAN MATCH), each with its lock released and its
        batch count made in the same step; the rest move server-side. A unique or batch job
        added meanwhile is caught there and its lock and count follow in a second step."""
        self._check_kill()
        moved = self._store.set_kill_marked(self.name, time.time() if now is None else now,
                                            _leaving_of)
        budget = self.size()
        while budget > 0:
            count = self._store.set_kill_batch(self.name, time.time() if now is None else now,
                                               BATCH, _leaving_of)
            moved += count
            budget -= count
            if count < BATCH:
                break
        return moved


class ScheduledSet(JobSet):
    """Jobs waiting for their run-at time, soonest first."""

    name = "schedule"


class RetrySet(JobSet):
    """Failed jobs waiting for their next attempt, soonest first."""

    name = "retry"


class DeadSet(JobSet):
    """Jobs that ran out of retries (the morgue), most recent death first."""

    name = "dead"
    newest_first = True
    can_kill = False


# -- processes --------------------------------------------------------------------------------

class ProcessSet:
    """Live worker processes; remote quiet (TSTP) and stop (TERM) through their signal lists."""

    def __init__(self, *, store: storage.Storage | None = None):
        self._store = store or storage.get_default()

    def list(self) -> builtins.list[ProcessRecord]:
        """Processes with a live heartbeat, sorted by identity (expired ones are pruned)."""
        return [process_record(*state) for state in self._store.process_states()]

    def quiet(self, identity: str) -> None:
        self._store.send_signal([identity], "TSTP")

    def stop(self, identity: str) -> None:
        self._store.send_signal([identity], "TERM")

    def quiet_all(self) -> int:
        return self._signal_all("TSTP")

    def stop_all(self) -> int:
        return self._signal_all("TERM")

    def _signal_all(self, name: str) -> int:
        identities = [p.identity for p in self.list()]
        self._store.send_signal(identities, name)
        return len(identities)


# -- finding a job by its jid -------------------------------------------------------------

def locate(jid: str, *, store: storage.Storage | None = None,
           waiting_only: bool = False) -> Location | None:
    """Where the job ``jid`` waits or runs now, or None if it is nowhere (finished, deleted,
    or never there).

    Looks where a job goes next in its life: the schedule set, the queues, the running jobs,
    the retry set, the dead set; each read a page at a time (a queue or set of a million jobs
    is scanned, never loaded whole: a slow call on such a queue, for a page's link or a shell).
    A job that moves while the search runs may be missed: None means "not found just now".
    ``waiting_only``: the schedule set, the queues and the retry set (``cancel``'s search).
    """
    store = store or storage.get_default()
    scheduled = ScheduledSet(store=store).find(jid)
    if scheduled is not None:
        return Location(place=ScheduledSet.name, name=ScheduledSet.name, record=scheduled)
    for queue in Queue.all(store=store):
        queued = queue.find(jid)
        if queued is not None:
            return Location(place="queue", name=queue.name, record=queued)
    for process in () if waiting_only else ProcessSet(store=store).list():
        for work in process.work:
            if work.job.jid == jid:
                return Location(place="busy", name=process.identity, record=work.job)
    for job_set in (RetrySet,) if waiting_only else (RetrySet, DeadSet):
        found = job_set(store=store).find(jid)
        if found is not None:
            return Location(place=job_set.name, name=job_set.name, record=found)
    return None


# -- metrics ----------------------------------------------------------------------------------

class Metrics:
    """Per job name execution metrics from the hourly buckets the workers write."""

    def __init__(self, *, store: storage.Storage | None = None):
        self._store = store or storage.get_default()

    def summary(self, hours: int, now: float | None = None) -> list[JobMetrics]:
        """Totals over the last ``hours`` hours (the current one included), sorted by name."""
        current = int((time.time() if now is None else now) // 3600)
        totals: dict[str, dict[str, int]] = {}
        for _, name, fields in self._store.metrics_read(range(current - hours + 1, current + 1)):
            acc = totals.setdefault(name, {})
            for field_name, value in fields.items():
                acc[field_name] = acc.get(field_name, 0) + value
        return [job_metrics(name, totals[name]) for name in sorted(totals)]

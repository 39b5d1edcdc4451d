"""Storage verbs of the read/manage side (``django_kiq.api``): paging, finding and moving jobs
in queues and in the schedule/retry/dead sets, process control, stats and metrics reads.

A mixin of :class:`~django_kiq.storage.store.Storage`: methods use ``self.client`` and
``self.keys``. Called from whatever thread runs the API (admin requests, shells, scripts). Every
read is bounded: lists and sets are paged by index or scanned in pages, never loaded whole.
Members travel as the exact bytes Redis holds, so a delete or move always names the member that
is there; moves are Lua scripts (``lua/set_*.lua``) that act only when the member was removed.
What leaves with a member (:class:`Leaving`: a unique job's lock, issue 11; a batch job's count
as dead in its batch, issue 13) goes in the same script that deletes or kills it; whole queues
and sets are renamed aside first, then read in pages for the members something leaves with.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from .base import StorageBase
from .batches import BatchMark

SIGNAL_TTL = 60  # a signal nobody picks up (the process is gone) does not linger
# Snapshot attempts while queue/process names keep changing under it; the last read is used.
SNAPSHOT_TRIES = 3
TRASH_TTL = 3600  # an aside copy outlives a caller that died before dropping it, not longer
UNIQUE_NEEDLE = b'"kiq_unique"'  # the field a unique job's hash carries (its lock's digest)
BATCH_NEEDLE = b'"bid"'  # the field a batch job's hash carries
NEEDLES = (UNIQUE_NEEDLE, BATCH_NEEDLE)  # a member holding neither leaves alone
UNIQUE_PAGE = 5000  # members per set_unique_scan.lua call


@dataclass(frozen=True, slots=True, kw_only=True)
class Leaving:
    """What goes with a member deleted or killed through the API, in the same step: the
    unique lock it holds (digest, jid), released if that jid still holds it, and its count
    as dead in its batch (``mark``, outcome "d"; see set_lib.lua)."""

    lock: tuple[str, str] | None = None
    mark: BatchMark | None = None


#: What leaves with a member, given its bytes, or None: the API decodes members, not us.
LeavingOf = Callable[[bytes], "Leaving | None"]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _hash_text(mapping: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in mapping.items()}


def _int(value: bytes | str | None) -> int:
    """A counter as Redis returns it; a foreign, non-numeric value counts as 0."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


class SetOps(StorageBase):
    dead_max_jobs: int
    dead_timeout: float
    _batch_keys: Callable[[str], list[str]]  # BatchOps

    def _register_set_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""
        self._set_move = self._script("set_move")
        self._set_kill = self._script("set_kill")
        self._set_kill_batch = self._script("set_kill_batch")
        self._set_remove = self._script("set_remove")
        self._set_clear = self._script("set_clear")
        self._set_unique_scan = self._script("set_unique_scan")
        self._set_requeue_batch = self._script("set_requeue_batch")

    # -- queues --------------------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Registered queues and paused ones, sorted: clearing a paused queue drops its
        registration, yet it must stay listed (with Resume) while it is paused."""
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(self.keys.queues)
        pipe.smembers(self.keys.paused_queues)
        registered, paused = pipe.execute()
        return sorted({_text(name) for name in registered | paused})

    def queue_size(self, name: str) -> int:
        return self.client.llen(self.keys.queue(name))

    def queue_range(self, name: str, start: int, stop: int) -> list[bytes]:
        """LRANGE: index 0 is the newest job (the left end), -1 the next to run."""
        return cast("list[bytes]", self.client.lrange(self.keys.queue(name), start, stop))

    def queue_oldest(self, name: str) -> bytes | None:
        return cast("bytes | None", self.client.lindex(self.keys.queue(name), -1))

    def queue_remove(self, name: str, raw: bytes, leaving: Leaving | None = None) -> int:
        """Remove one member; what ``leaving`` names goes with it (see :class:`Leaving`)."""
        return self._remove("list", self.keys.queue(name), [raw], [leaving])

    def queue_clear(self, name: str, leaving_of: LeavingOf | None = None) -> int:
        """Drop a queue and its registration; returns how many jobs it held. With
        ``leaving_of``, what leaves with its jobs goes too (see :meth:`_clear`)."""
        self.forget_registration(name)
        return self._clear("list", self.keys.queue(name), name, leaving_of)

    def pause_queue(self, name: str) -> None:
        self.client.sadd(self.keys.paused_queues, name)

    def resume_queue(self, name: str) -> None:
        self.client.srem(self.keys.paused_queues, name)

    def paused_queues(self) -> set[str]:
        return {_text(name) for name in self.client.smembers(self.keys.paused_queues)}

    def queue_paused(self, name: str) -> bool:
        return bool(self.client.sismember(self.keys.paused_queues, name))

    # -- sorted sets (schedule, retry, dead) ---------------------------------------------------

    def set_size(self, set_name: str) -> int:
        return self.client.zcard(self.keys.sorted_set(set_name))

    def set_range(self, set_name: str, start: int, stop: int, *,
                  reverse: bool = False) -> list[tuple[bytes, float]]:
        """Members by rank (O(log n + count) at any offset), lowest score first unless reverse."""
        return cast("list[tuple[bytes, float]]",
                    self.client.zrange(self.keys.sorted_set(set_name), start, stop, desc=reverse,
                                       withscores=True))

    def set_at_score(self, set_name: str, score: float, offset: int,
                     count: int) -> list[tuple[bytes, float]]:
        """Members whose score is exactly ``score``, paged."""
        return cast("list[tuple[bytes, float]]",
                    self.client.zrange(self.keys.sorted_set(set_name), score, score, byscore=True,
                                       offset=offset, num=count, withscores=True))

    def set_scan(self, set_name: str, cursor: int, match: str,
                 count: int) -> tuple[int, list[tuple[bytes, float]]]:
        """One ZSCAN step; ``match`` is a Redis glob pattern, already escaped by the caller."""
        return cast("tuple[int, list[tuple[bytes, float]]]",
                    self.client.zscan(self.keys.sorted_set(set_name), cursor, match=match,
                                      count=count))

    def set_remove(self, set_name: str, raws: Sequence[bytes],
                   leaving: Sequence[Leaving | None] = ()) -> int:
        """Remove members; what ``leaving[i]`` names goes with ``raws[i]``."""
        return self._remove("zset", self.keys.sorted_set(set_name), raws, leaving)

    def _remove(self, kind: str, key: str, raws: Sequence[bytes],
                leaving: Sequence[Leaving | None]) -> int:
        """set_remove.lua; ``kind`` "gone": the members left already, only ``leaving`` acts."""
        if not raws:
            return 0
        member_keys, args = self._leaving_args(key, raws, leaving)
        return int(self._set_remove(keys=[key, self.keys.schedule, *member_keys],
                                    args=[kind, *args]))

    def _leaving_args(self, unused: str, raws: Sequence[bytes],
                      leaving: Sequence[Leaving | None]) -> tuple[list[str], list]:
        """Per member (set_lib.lua): its lock key (``unused`` for none) and its batch levels'
        keys; its bytes, the lock's jid, its batch jid, the number of levels, the batch TTL."""
        keys: list[str] = []
        args: list = []
        for i, raw in enumerate(raws):
            left = (leaving[i] if i < len(leaving) else None) or Leaving()
            digest, jid = left.lock or ("", "")
            keys.append(self.keys.unique(digest) if digest and jid else unused)
            mark = left.mark
            bids = mark.bids if mark is not None else ()
            for bid in bids:
                keys.extend(self._batch_keys(bid))
            args.extend([raw, jid if digest else "", mark.member if mark else "", len(bids),
                         mark.ttl if mark else 0])
        return keys, args

    def set_to_queues(self, set_name: str,
                      moves: Sequence[tuple[bytes, bytes, str]]) -> list[int]:
        """Move (old member, new payload, queue) entries onto their queues; flags 1 = moved."""
        if not moves:
            return []
        keys = [self.keys.sorted_set(set_name), self.keys.queues]
        args: list = []
        for old, new, queue in moves:
            keys.append(self.keys.queue(queue))
            args.extend([old, new, queue])
        return [int(f) for f in self._set_move(keys=keys, args=args)]

    def set_requeue_batch(self, set_name: str, queues: Sequence[str], offset: int, count: int,
                          now: float) -> tuple[int, int, str | None]:
        """Move up to ``count`` members from rank ``offset`` onto their queues, server-side.

        Returns (moved, malformed members skipped, a queue name missing from ``queues`` that
        stopped the batch or None); see set_requeue_batch.lua.
        """
        keys = [self.keys.sorted_set(set_name), self.keys.queues,
                *(self.keys.queue(q) for q in queues)]
        moved, skipped, unknown = self._set_requeue_batch(
            keys=keys, args=[repr(now), offset, count, *queues])
        return int(moved), int(skipped), None if unknown is None else _text(unknown)

    def set_kill(self, set_name: str, raws: Sequence[bytes], now: float,
                 leaving: Sequence[Leaving | None] = ()) -> int:
        """Move members, unchanged, to the dead set (score ``now``) and trim it; what
        ``leaving[i]`` names goes with ``raws[i]`` (a dead job holds no lock; a batch job
        counts as dead in its batch)."""
        if not raws:
            return 0
        key = self.keys.sorted_set(set_name)
        member_keys, args = self._leaving_args(key, raws, leaving)
        return self._set_kill(keys=[key, self.keys.dead, self.keys.schedule, *member_keys],
                              args=[*self._dead_trim_args(now), *args])

    def set_kill_marked(self, set_name: str, now: float, leaving_of: LeavingOf) -> int:
        """Kill the members that something leaves with (unique and batch jobs, found by Redis:
        ZSCAN MATCH), each in one step with what leaves with it; the start of a kill-all.
        Returns how many moved."""
        moved = 0
        for needle in NEEDLES:
            cursor = 0
            while True:
                cursor, rows = self.set_scan(set_name, cursor, f"*{needle.decode()}*", 1000)
                raws = [raw for raw, _ in rows]
                moved += self.set_kill(set_name, raws, now, [leaving_of(raw) for raw in raws])
                if cursor == 0:
                    break
        return moved

    def set_kill_batch(self, set_name: str, now: float, batch: int,
                       leaving_of: LeavingOf | None = None) -> int:
        """Move the first ``batch`` members to the dead set; returns how many moved. With
        ``leaving_of``, what leaves with the unique and batch jobs among them (ones that
        arrived after :meth:`set_kill_marked`) goes right after, in a second step."""
        moved, *marked = self._set_kill_batch(
            keys=[self.keys.sorted_set(set_name), self.keys.dead],
            args=[*self._dead_trim_args(now), batch, *(NEEDLES if leaving_of else ())])
        if marked and leaving_of is not None:
            self._remove("gone", self.keys.dead, marked, [leaving_of(raw) for raw in marked])
        return int(moved)

    def _dead_trim_args(self, now: float) -> list:
        return [repr(now), self.dead_max_jobs, repr(now - self.dead_timeout)]

    def set_clear(self, set_name: str, leaving_of: LeavingOf | None = None) -> int:
        """Drop a whole set; returns how many it held. With ``leaving_of``, what leaves with
        its jobs goes too (see :meth:`_clear`)."""
        return self._clear("zset", self.keys.sorted_set(set_name), "", leaving_of)

    def _clear(self, kind: str, key: str, queue: str, leaving_of: LeavingOf | None) -> int:
        """Rename the queue or set aside in one step (set_clear.lua); then, a page at a time,
        find its unique and batch jobs (set_unique_scan.lua: Redis filters) and release their
        locks and count them dead in their batches, one set_remove.lua "gone" call per page;
        then UNLINK it (freed in the background). The jobs set aside can no longer run, so the
        compare-and-delete of their locks never frees a running job's lock. A caller dying
        midway leaves counts undone (a retry finds nothing to clear); each count is made
        once, whatever runs twice (set_lib.lua)."""
        trash = self.keys.trash(secrets.token_hex(8))
        count = int(self._set_clear(keys=[key, trash, self.keys.queues if queue else key],
                                    args=[kind, queue, TRASH_TTL]))
        return self._empty_trash(kind, trash, count, leaving_of)

    def _empty_trash(self, kind: str, trash: str, count: int,
                     leaving_of: LeavingOf | None) -> int:
        """:meth:`_clear`'s steps after the rename: release what leaves with the ``count``
        jobs set aside in ``trash``, a page at a time, then UNLINK it. Returns ``count``."""
        if count and leaving_of is not None:
            start = 0
            while start < count:
                read, *members = self._set_unique_scan(
                    keys=[trash], args=[kind, start, UNIQUE_PAGE, *NEEDLES])
                self._remove("gone", trash, members, [leaving_of(raw) for raw in members])
                start += max(1, int(read))
                if int(read) < UNIQUE_PAGE:
                    break
        self.client.unlink(trash)
        return count

    # -- job results (docs/workflows.md) --------------------------------------------------------

    def job_results(self, jids: Sequence[str]) -> list[dict[str, str] | None]:
        """The result records of ``jids`` (None where there is none), one pipelined read: a
        page of the admin's queue page shows its jobs' status and progress."""
        if not jids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for jid in jids:
            pipe.hgetall(self.keys.job_result(jid))
        return [_hash_text(flat) if flat else None for flat in pipe.execute()]

    # -- dashboard numbers ---------------------------------------------------------------------

    def stats_snapshot(self, default_queue: str = "default", *, queues: bool = False,
                       extra_queues: Sequence[str] = (), processes: bool = False,
                       days: Sequence[dt.date] = ()) -> dict:
        """Counters and sizes for the summary bar, and what a page shows beside them, in one
        MULTI: every figure comes from the same instant, so they add up.

        Per-queue and per-process keys must be named in the transaction (building key names
        inside Lua would hide them from Redis Cluster), so it is built from the names the last
        snapshot saw and re-reads the name sets inside it; when they changed meanwhile it runs
        again with the new names. The usual cost is one round trip.

        Options: ``queues`` adds ``queue_states`` {name: (size, oldest member, paused)} for every
        registered or paused queue and each of ``extra_queues``; ``processes`` adds
        ``process_states`` as :meth:`process_states` gives them (pruning expired identities);
        ``days`` adds ``daily``, (processed, failed) per UTC day.
        """
        guess: tuple[tuple[str, ...], tuple[str, ...]] = getattr(self, "_snapshot_names",
                                                                 ((), ()))
        for _ in range(SNAPSHOT_TRIES):
            used = guess
            replies = self._snapshot_pipe(default_queue, *used, extra_queues, queues=queues,
                                          processes=processes, days=days)
            registered, paused, members = replies[:3]
            guess = (tuple(sorted({_text(n) for n in registered | paused})),
                     tuple(sorted(_text(i) for i in members)))
            if guess == used:
                break
        self._snapshot_names = guess
        return self._snapshot_result(replies, used, extra_queues, queues=queues,
                                     processes=processes, days=days)

    def _snapshot_pipe(self, default_queue: str, names: Sequence[str],
                       identities: Sequence[str], extra: Sequence[str], *, queues: bool,
                       processes: bool, days: Sequence[dt.date]) -> list:
        k = self.keys
        extra = [name for name in extra if name not in names]
        pipe = self.client.pipeline(transaction=self.atomic_snapshots)
        pipe.smembers(k.queues)
        pipe.smembers(k.paused_queues)
        pipe.smembers(k.processes)
        pipe.get(k.stat("processed"))
        pipe.get(k.stat("failed"))
        pipe.get(k.stat("cancelled"))
        pipe.get(k.stat("expired"))
        for name in ("schedule", "retry", "dead"):
            pipe.zcard(k.sorted_set(name))
        pipe.lindex(k.queue(default_queue), -1)
        for name in (*names, *extra):
            pipe.llen(k.queue(name))
            if queues:
                pipe.lindex(k.queue(name), -1)
        for identity in identities:
            if processes:
                pipe.hgetall(k.process(identity))
                pipe.hgetall(k.work(identity))
            else:
                pipe.hget(k.process(identity), "busy")
        if days:
            pipe.mget([k.stat_daily(name, day) for name in ("processed", "failed")
                       for day in days])
        return pipe.execute()

    def _snapshot_result(self, replies: list, guess: tuple, extra: Sequence[str], *,
                         queues: bool, processes: bool, days: Sequence[dt.date]) -> dict:
        names, identities = guess
        extra = [name for name in extra if name not in names]
        paused = {_text(n) for n in replies[1]}
        processed, failed, cancelled, expired, scheduled, retries, dead, oldest = replies[3:11]
        rest = iter(replies[11:])
        states = {}
        for name in (*names, *extra):
            size = next(rest)
            states[name] = (size, next(rest) if queues else None, name in paused)
        out = {
            "processed": _int(processed), "failed": _int(failed),
            "cancelled": _int(cancelled), "expired": _int(expired),
            "scheduled_size": scheduled, "retry_size": retries, "dead_size": dead,
            "processes_size": len(identities), "default_oldest": oldest,
            "enqueued": sum(states[name][0] for name in names),
        }
        if processes:
            live, gone = [], []
            for identity in identities:
                state, work = next(rest), next(rest)
                if state:
                    live.append((identity, _hash_text(state), _hash_text(work)))
                else:
                    gone.append(identity)
            if gone:  # their owner stopped heartbeating (Sidekiq's ProcessSet cleanup)
                self.client.srem(self.keys.processes, *gone)
            out["process_states"] = live
            out["busy"] = sum(_int(state.get("busy")) for _, state, _ in live)
        else:
            out["busy"] = sum(_int(next(rest)) for _ in identities)
        if queues:
            out["queue_states"] = states
        if days:
            values = [_int(v) for v in next(rest)]
            out["daily"] = list(zip(values[:len(days)], values[len(days):]))
        return out

    def daily_stats(self, days: Sequence[dt.date]) -> list[tuple[int, int]]:
        """(processed, failed) for each UTC day, 0 where no counter exists."""
        if not days:
            return []
        keys = [self.keys.stat_daily(name, day) for name in ("processed", "failed") for day in days]
        values = [int(v or 0) for v in self.client.mget(keys)]
        return list(zip(values[:len(days)], values[len(days):]))

    # -- processes -----------------------------------------------------------------------------

    def process_states(self) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        """(identity, process hash, work hash) of every live process, sorted by identity.

        Identities whose hash has expired are removed from ``processes`` on the way, like
        Sidekiq's ProcessSet cleanup: their owner stopped heartbeating.
        """
        k = self.keys
        identities = sorted(_text(i) for i in self.client.smembers(k.processes))
        if not identities:
            return []
        pipe = self.client.pipeline(transaction=False)
        for identity in identities:
            pipe.hgetall(k.process(identity))
            pipe.hgetall(k.work(identity))
        replies = pipe.execute()
        live, gone = [], []
        for i, identity in enumerate(identities):
            state, work = replies[2 * i], replies[2 * i + 1]
            if state:
                live.append((identity, _hash_text(state), _hash_text(work)))
            else:
                gone.append(identity)
        if gone:
            self.client.srem(k.processes, *gone)
        return live

    def send_signal(self, identities: Sequence[str], name: str) -> None:
        """LPUSH a remote signal (TSTP, TERM) for each process; its heartbeat obeys it."""
        if not identities:
            return
        pipe = self.client.pipeline(transaction=False)
        for identity in identities:
            pipe.lpush(self.keys.signals(identity), name)
            pipe.expire(self.keys.signals(identity), SIGNAL_TTL)
        pipe.execute()

    # -- metrics -------------------------------------------------------------------------------

    def metrics_read(self, hours: Sequence[int]) -> list[tuple[int, str, dict[str, int]]]:
        """(hour, job name, counter fields) for every job seen in those hours.

        Two round trips: the names of each hour, then every (hour, name) hash.
        """
        if not hours:
            return []
        pipe = self.client.pipeline(transaction=False)
        for hour in hours:
            pipe.smembers(self.keys.metrics_names(hour))
        pairs = [(hour, _text(name)) for hour, names in zip(hours, pipe.execute())
                 for name in sorted(names)]
        if not pairs:
            return []
        pipe = self.client.pipeline(transaction=False)
        for hour, name in pairs:
            pipe.hgetall(self.keys.metrics(name, hour))
        out = []
        for (hour, name), fields in zip(pairs, pipe.execute()):
            counters = {}
            for field, value in fields.items():
                try:
                    counters[_text(field)] = int(value)
                except ValueError:
                    continue  # a foreign field that is not a counter
            out.append((hour, name, counters))
        return out

"""Storage verbs of the read/manage side (``django_kiq.api``): paging, finding and moving jobs
in queues and in the schedule/retry/dead sets, process control, stats and metrics reads.

A mixin of :class:`~django_kiq.storage.store.Storage`: methods use ``self.client`` and
``self.keys``. Called from whatever thread runs the API (admin requests, shells, scripts). Every
read is bounded: lists and sets are paged by index or scanned in pages, never loaded whole.
Members travel as the exact bytes Redis holds, so a delete or move always names the member that
is there; moves are Lua scripts (``lua/set_*.lua``) that act only when the member was removed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

    from .keys import Keys

SIGNAL_TTL = 60  # a signal nobody picks up (the process is gone) does not linger
# Snapshot attempts while queue/process names keep changing under it; the last read is used.
SNAPSHOT_TRIES = 3


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


class SetOps:
    client: redis.Redis
    keys: Keys
    dead_max_jobs: int
    dead_timeout: float

    def _register_set_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""
        self._set_move = self._script("set_move")
        self._set_kill = self._script("set_kill")
        self._set_kill_batch = self._script("set_kill_batch")
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
        return self.client.lrange(self.keys.queue(name), start, stop)

    def queue_oldest(self, name: str) -> bytes | None:
        return self.client.lindex(self.keys.queue(name), -1)

    def queue_remove(self, name: str, raw: bytes) -> int:
        return self.client.lrem(self.keys.queue(name), 1, raw)

    def queue_clear(self, name: str) -> int:
        """Drop a queue and its registration; returns how many jobs it held."""
        self.forget_registration(name)
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(self.keys.queue(name))
        pipe.unlink(self.keys.queue(name))
        pipe.srem(self.keys.queues, name)
        return pipe.execute()[0]

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
        return self.client.zrange(self.keys.sorted_set(set_name), start, stop, desc=reverse,
                                  withscores=True)

    def set_at_score(self, set_name: str, score: float, offset: int,
                     count: int) -> list[tuple[bytes, float]]:
        """Members whose score is exactly ``score``, paged."""
        return self.client.zrange(self.keys.sorted_set(set_name), score, score, byscore=True,
                                  offset=offset, num=count, withscores=True)

    def set_scan(self, set_name: str, cursor: int, match: str,
                 count: int) -> tuple[int, list[tuple[bytes, float]]]:
        """One ZSCAN step; ``match`` is a Redis glob pattern, already escaped by the caller."""
        return self.client.zscan(self.keys.sorted_set(set_name), cursor, match=match, count=count)

    def set_remove(self, set_name: str, raws: Sequence[bytes]) -> int:
        if not raws:
            return 0
        return self.client.zrem(self.keys.sorted_set(set_name), *raws)

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

    def set_kill(self, set_name: str, raws: Sequence[bytes], now: float) -> int:
        """Move members, unchanged, to the dead set (score ``now``) and trim it."""
        if not raws:
            return 0
        return self._set_kill(keys=[self.keys.sorted_set(set_name), self.keys.dead],
                              args=[*self._dead_trim_args(now), *raws])

    def set_kill_batch(self, set_name: str, now: float, batch: int) -> int:
        """Move the first ``batch`` members to the dead set; returns how many moved."""
        return self._set_kill_batch(keys=[self.keys.sorted_set(set_name), self.keys.dead],
                                    args=[*self._dead_trim_args(now), batch])

    def _dead_trim_args(self, now: float) -> list:
        return [repr(now), self.dead_max_jobs, repr(now - self.dead_timeout)]

    def set_clear(self, set_name: str) -> int:
        """Drop a whole set (UNLINK frees it in the background); returns how many it held."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zcard(self.keys.sorted_set(set_name))
        pipe.unlink(self.keys.sorted_set(set_name))
        return pipe.execute()[0]

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
        pipe = self.client.pipeline(transaction=True)
        pipe.smembers(k.queues)
        pipe.smembers(k.paused_queues)
        pipe.smembers(k.processes)
        pipe.get(k.stat("processed"))
        pipe.get(k.stat("failed"))
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
        processed, failed, scheduled, retries, dead, oldest = replies[3:9]
        rest = iter(replies[9:])
        states = {}
        for name in (*names, *extra):
            size = next(rest)
            states[name] = (size, next(rest) if queues else None, name in paused)
        out = {
            "processed": _int(processed), "failed": _int(failed),
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

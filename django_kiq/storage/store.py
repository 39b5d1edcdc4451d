"""The storage layer: every Redis command django-kiq sends, one method per verb.

Nothing outside ``django_kiq.storage`` imports redis or knows a key name. Payloads travel as the
exact bytes Redis holds (``bytes``), never re-encoded here, so acknowledging or moving a job always
matches the member that is in Redis. Multi-key changes are Lua scripts (``lua/*.lua``, each with
a header) or MULTI pipelines. Callers run on many threads: a redis-py client is thread-safe, and
the only other mutable state is a cache of queue registrations (single dict operations).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis
from redis.commands.core import Script

from .base import ScriptArg
from .keys import Keys
from .batches import BatchMark, BatchOps, ResultWrite, Succeeded
from .control import ControlOps
from .cron_state import PeriodicOps
from .limits import LimitOps
from .results import ResultOps
from .sets import SetOps

LUA_DIR = Path(__file__).with_name("lua")
LUA_INCLUDE = re.compile(r"^-- include: (\w+\.lua)$", re.MULTILINE)
PUSH_BATCH = 1000
REGISTER_EVERY = 5.0  # seconds a process trusts its last registration of a queue name
DAILY_STATS_TTL = 5 * 365 * 24 * 3600
METRICS_TTL = 73 * 3600  # the admin shows up to 72 hours

# Errors that mean "Redis is unreachable or failing over right now": callers back off and retry.
TRANSIENT_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    # Redis full (maxmemory with noeviction, the setting we recommend): the write was refused,
    # not done, and room may come back. Not transient, it killed the worker's fetcher thread
    # while the heartbeat kept the process (and its jobs in progress) looking alive.
    redis.exceptions.OutOfMemoryError,
    # Redis Cluster (storage/cluster.py) during a failover: the slot's master is down and no
    # replica took over yet, or a slot is migrating; the command did not run.
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)
RedisError = redis.exceptions.RedisError


def lua_text(name: str) -> str:
    """The text of script ``name``.lua. Lua cannot import: "-- include: x.lua" pastes a shared
    library in (batch_lib.lua)."""
    return LUA_INCLUDE.sub(lambda m: (LUA_DIR / m.group(1)).read_text(),
                           (LUA_DIR / f"{name}.lua").read_text())


@dataclass(frozen=True, slots=True, kw_only=True)
class Settle:
    """One job leaving an in-progress list: where it goes (see settle.lua for kinds)."""

    kind: str  # "x" discard, "q" head of queue, "l" tail of queue, "z" sorted set, "d" dead
    old: bytes
    new: bytes = b""
    dest: str = ""  # queue name for q/l, set name (retry/schedule/dead) for z/d
    score: float = 0.0
    # Cleanups done in the same step (execution control; all off by default):
    unlock: str = ""  # the job's unique lock digest: released if ``jid`` still holds it
    jid: str = ""  # the job's jid (the lock's holder, the checkpoint's owner)
    drop_cursor: bool = False  # delete the job's iterable checkpoint
    count: str = ""  # a counter to increment: "cancelled" or "expired"
    result: ResultWrite | None = None  # the job's result record (``@job(result_ttl=...)``)
    batch: BatchMark | None = None  # the job's outcome counted in its batch


@dataclass(frozen=True, slots=True, kw_only=True)
class PollerOutlook:
    """A poller's view between passes (``Storage.poller_outlook``)."""

    next_due: float | None  # earliest score in the schedule and retry sets; None if both empty
    server_time: float  # Redis's clock when it answered, epoch seconds
    leftovers: list[bytes]  # what the poller's in-progress lane still holds


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    identity: str
    info: str
    busy: int
    quiet: bool
    rss_kb: int
    rtt_us: int
    work: dict[str, str]
    ttl: float
    processed: int
    failed: int


class Storage(SetOps, PeriodicOps, ResultOps, ControlOps, BatchOps, LimitOps):
    def __init__(self, client: redis.Redis, keys: Keys, *, dead_max_jobs: int = 10_000,
                 dead_timeout: float = 180 * 24 * 3600):
        self.client = client
        self.keys = keys
        self.dead_max_jobs = dead_max_jobs
        self.dead_timeout = dead_timeout
        # queue name -> monotonic time this process last registered it (see push)
        self._registered: dict[str, float] = {}
        self._push = self._script("push")
        self._fetch = self._script("fetch")
        self._settle = self._script("settle")
        self._settle_fetch = self._script("settle_fetch")
        self._due = self._script("due")
        self._unregister = self._script("unregister")

        self._register_set_scripts()
        self._register_periodic_scripts()
        self._register_result_scripts()
        self._register_control_scripts()
        self._register_batch_scripts()
        self._register_limit_scripts()

    def dedicated(self) -> "Storage":
        """A Storage on one connection of its own, for a thread that sends a command at a time.

        The fetcher calls Redis thousands of times a second; checking a connection out of the
        pool costs a readiness syscall per call, a held connection does not. It reconnects by
        itself after an error, like a pooled one.
        """
        client = redis.Redis(connection_pool=self.client.connection_pool,
                             single_connection_client=True)
        return Storage(client, self.keys, dead_max_jobs=self.dead_max_jobs,
                       dead_timeout=self.dead_timeout)

    def _script(self, name: str) -> Script:
        return self.client.register_script(lua_text(name))

    # -- client side -------------------------------------------------------------------------

    def push(self, items: Sequence[tuple[str, bytes]]) -> None:
        """LPUSH each (queue, payload) and register its queue in ``queues``.

        A queue this process registered less than REGISTER_EVERY seconds ago gets a bare LPUSH;
        otherwise push.lua registers it in the same command. So a single enqueue costs one LPUSH,
        the floor, while a queue dropped from ``queues`` (cleared from the admin, or a Redis
        restart) is registered again within seconds. One command per queue per 1,000 jobs,
        pipelined; jobs keep their order within a queue.
        """
        if len(items) == 1:  # a single enqueue: no grouping
            queue, raw = items[0]
            now = time.monotonic()
            if now - self._registered.get(queue, -REGISTER_EVERY) < REGISTER_EVERY:
                self.client.lpush(self.keys.queue(queue), raw)
                return
        for start in range(0, len(items), PUSH_BATCH):
            by_queue: dict[str, list[bytes]] = {}
            for queue, raw in items[start:start + PUSH_BATCH]:
                by_queue.setdefault(queue, []).append(raw)
            now = time.monotonic()
            stale = {q for q in by_queue if now - self._registered.get(q, -REGISTER_EVERY) >=
                     REGISTER_EVERY}
            if len(by_queue) == 1:
                [(queue, raws)] = by_queue.items()
                self._push_one(self.client, queue, raws, register=queue in stale)
            else:
                pipe = self.client.pipeline(transaction=True)
                for queue, raws in by_queue.items():
                    self._push_one(pipe, queue, raws, register=queue in stale)
                pipe.execute()
            for queue in stale:
                self._registered[queue] = now

    def _push_one(self, client: redis.Redis, queue: str, raws: list[bytes], *,
                  register: bool) -> None:
        if register:
            self._push(keys=[self.keys.queues, self.keys.queue(queue)], args=[queue, *raws],
                       client=client)
        else:
            client.lpush(self.keys.queue(queue), *raws)

    def forget_registration(self, queue: str) -> None:
        """The next push to ``queue`` registers it again (after the queue was dropped)."""
        self._registered.pop(queue, None)

    def schedule(self, items: Sequence[tuple[float, bytes]], set_name: str = "schedule") -> None:
        key = self.keys.sorted_set(set_name)
        for start in range(0, len(items), PUSH_BATCH):
            self.client.zadd(key, {raw: at for at, raw in items[start:start + PUSH_BATCH]})

    # -- worker: fetch, wait, settle ---------------------------------------------------------

    def fetch(self, identity: str, queues: Sequence[str], count: int,
              acks: Sequence[bytes] = (), settles: Sequence[Settle | Succeeded] = (),
              ) -> tuple[list[tuple[str, bytes]], set[str]]:
        """Ack ``acks``, settle ``settles`` (done jobs with cleanups: :meth:`settle`), move up
        to ``count`` jobs into the in-progress list; one round trip.

        Returns the (queue, payload) pairs fetched and the names of the paused queues skipped.
        """
        keys = [self.keys.wip(identity), self.keys.paused_queues,
                *(self.keys.queue(q) for q in queues)]
        args: list[ScriptArg] = [count, len(acks), *acks, *queues]
        if settles:
            flat = self._settle_then_fetch(identity, settles, keys, args)
        else:
            flat = self._fetch(keys=keys, args=args)
        npaused = int(flat[0])
        paused = {queues[int(i) - 1] for i in flat[1:1 + npaused]}
        rest = flat[1 + npaused:]
        jobs = [(queues[int(rest[i]) - 1], rest[i + 1]) for i in range(0, len(rest), 2)]
        return jobs, paused

    def wait_for_job(self, queue: str, timeout: float) -> bool:
        """Block until ``queue`` holds a job, without taking it.

        BLMOVE from a list onto its own right end moves the oldest job back where it was: an
        atomic no-op that only returns once the list is non-empty, so an idle worker wakes
        within a round trip of a push, whoever pushed it (Ruby Sidekiq included).
        """
        key = self.keys.queue(queue)
        # redis-py types the timeout int; BLMOVE takes fractional seconds (Redis >= 6).
        return self.client.blmove(key, key, timeout, "RIGHT",  # type: ignore[arg-type]
                                  "RIGHT") is not None

    def _settle_then_fetch(self, identity: str, settles: Sequence[Settle | Succeeded],
                           keys: list, args: list) -> list:
        """settle.lua then fetch.lua in one script call (settle_fetch.lua). An error is raised
        whether or not the call ran: the caller reconciles, as after any failed fetch."""
        settle_keys, settle_args, _ = self._settle_args(identity, settles, "fetch", False,
                                                        time.time())
        _, flat = self._settle_fetch(keys=[*settle_keys, *keys],
                                     args=[len(settle_keys), len(settle_args), *settle_args,
                                           *args])
        return flat

    def settle(self, identity: str, entries: Sequence[Settle | Succeeded], *,
               lane: str = "fetch", guard: bool = False,
               now: float | None = None) -> list[int] | None:
        """Move jobs out of an in-progress list; None if ``guard`` found the owner alive.

        Returns one flag per entry: 1 if the job was still in the list and moved, else 0.
        """
        if not entries:
            return []
        now = time.time() if now is None else now
        keys, args, order = self._settle_args(identity, entries, lane, guard, now)
        flags = self._settle(keys=keys, args=args)
        if flags and flags[0] == -1:
            return None
        # settle.lua answers for the entries first, then for the batch groups' jobs.
        out = [0] * len(entries)
        for position, flag in zip(order, flags):
            out[position] = int(flag)
        return out

    def _settle_args(self, identity: str, entries: Sequence[Settle | Succeeded], lane: str,
                     guard: bool, now: float) -> tuple[list, list, list[int]]:
        """settle.lua's keys and arguments, and the entries' positions in the order it answers
        for them: done jobs whose only cleanup is a success in their batch (most of a batch's
        drain) go in its lean batch groups (:meth:`batch_done_args`), the others one by one."""
        keys = [self.keys.wip(identity, lane), self.keys.process(identity), self.keys.queues]
        args: list = ["1" if guard else "0", self.dead_max_jobs, repr(now - self.dead_timeout),
                      0]
        unused = keys[0]  # a key settle.lua never touches for this entry
        order: list[int] = []
        succeeded: list[tuple[int, Settle | Succeeded]] = []
        for position, e in enumerate(entries):
            if isinstance(e, Succeeded):
                succeeded.append((position, e))
                continue
            mark = e.batch
            if (mark is not None and mark.outcome == "s" and e.kind == "x" and e.result is None
                    and not e.unlock and not e.drop_cursor and not e.count):
                succeeded.append((position, e))
                continue
            order.append(position)
            extra = e.dest if e.kind in ("q", "l") else repr(e.score)
            lock = self.keys.unique(e.unlock) if e.unlock else unused
            cursor = self.keys.cursor(e.jid) if e.drop_cursor else unused
            counter = self.keys.stat(e.count) if e.count else unused
            keys.extend([self._dest_key(e), lock, cursor, counter])
            cleanup = ("c" if e.drop_cursor else "") + ("n" if e.count else "")
            if e.result is not None or e.batch is not None:  # workflows: off unless asked for
                more_keys, more_args, flags = self.workflow_settle_args(e.result, e.batch)
                keys.extend(more_keys)
                args.extend([e.kind, e.old, e.new, extra, e.jid if e.unlock else "",
                             cleanup + flags, *more_args])
                continue
            args.extend([e.kind, e.old, e.new, extra, e.jid if e.unlock else "", cleanup])
        args[3] = len(order)
        more_keys, more_args, grouped = self.batch_done_args(succeeded)
        keys.extend(more_keys)
        args.extend(more_args)
        return keys, args, order + grouped

    def _dest_key(self, entry: Settle) -> str:
        if entry.kind in ("q", "l"):
            return self.keys.queue(entry.dest)
        if entry.kind in ("z", "d"):
            return self.keys.sorted_set(entry.dest if entry.kind == "z" else "dead")
        return self.keys.wip_registry  # unused by "x"; any key name keeps KEYS aligned

    def wip_items(self, identity: str, lane: str = "fetch") -> list[bytes]:
        return cast("list[bytes]", self.client.lrange(self.keys.wip(identity, lane), 0, -1))

    def claim_due(self, set_name: str, identity: str, now: float | None,
                  limit: int) -> list[bytes]:
        """Move up to ``limit`` due jobs into the scheduler lane of ``identity`` (``due.lua``).

        Due means score <= Redis's clock (TIME); ``now`` stands in for that clock in tests.
        """
        return self._due(keys=[self.keys.sorted_set(set_name), self.keys.wip(identity, "sched")],
                         args=["" if now is None else repr(now), limit])

    def poller_outlook(self, set_names: Iterable[str], identity: str,
                       limit: int) -> PollerOutlook:
        """What a poller needs between passes, in one round trip (see :class:`PollerOutlook`)."""
        names = list(set_names)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.zrange(self.keys.sorted_set(name), 0, 0, withscores=True)
        pipe.time()
        pipe.lrange(self.keys.wip(identity, "sched"), 0, limit - 1)
        *firsts, (seconds, micros), leftovers = pipe.execute()
        scores = [rows[0][1] for rows in firsts if rows]
        return PollerOutlook(next_due=min(scores) if scores else None,
                             server_time=seconds + micros / 1e6, leftovers=leftovers)

    def server_time(self) -> float:
        """Redis's clock (TIME), epoch seconds: the one clock scheduling decisions follow."""
        seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def record_clock_offset(self, identity: str, offset: float, ttl: float) -> None:
        """Publish how far ``identity``'s clock is ahead of Redis's (negative: behind)."""
        self.client.set(self.keys.clock(identity), repr(offset), ex=max(1, int(ttl)))

    def clock_offsets(self) -> dict[str, float]:
        """identity -> clock offset of every live process that published one recently."""
        members = cast("set[bytes]", self.client.smembers(self.keys.processes))
        identities = sorted(i.decode() for i in members)
        if not identities:
            return {}
        values = self.client.mget([self.keys.clock(i) for i in identities])
        offsets = {}
        for identity, value in zip(identities, values):
            if value is None:  # none published yet
                continue
            try:
                offset = float(value)
            except ValueError:  # not ours to read
                continue
            if math.isfinite(offset):
                offsets[identity] = offset
        return offsets

    def add_dead(self, raw: bytes, now: float) -> None:
        """Put a job straight into the dead set (trimmed), e.g. a malformed payload's record."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.keys.dead, {raw: now})
        pipe.zremrangebyscore(self.keys.dead, "-inf", f"({now - self.dead_timeout!r}")
        pipe.zremrangebyrank(self.keys.dead, 0, -(self.dead_max_jobs + 1))
        pipe.execute()

    # -- processes ---------------------------------------------------------------------------

    def register(self, identity: str, info: str) -> None:
        """Record that ``identity`` may own an in-progress list (before its first fetch)."""
        self.client.hset(self.keys.wip_registry, identity, info)

    def heartbeat(self, beat: Heartbeat, *, metrics: dict[str, dict] | None = None,
                  now: float | None = None) -> list[str]:
        """Write the process state and flush counters; return remote signals (TSTP / TERM).

        ``metrics`` maps job name -> {field: increment} for this hour's bucket
        (see ``stats.summarize``); buckets expire after METRICS_TTL.
        """
        now = time.time() if now is None else now
        k, ident = self.keys, beat.identity
        day = dt.datetime.fromtimestamp(now, dt.UTC).date()
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(k.processes, ident)
        pipe.hset(k.process(ident), mapping={
            "info": beat.info, "busy": beat.busy, "beat": repr(now),
            "quiet": "true" if beat.quiet else "false", "rss": beat.rss_kb, "rtt_us": beat.rtt_us,
        })
        pipe.expire(k.process(ident), max(1, int(beat.ttl)))
        pipe.hsetnx(k.wip_registry, ident, beat.info)
        pipe.delete(k.work(ident))
        if beat.work:
            # redis-py's mapping key type is invariant: no dict[str, str] fits it
            pipe.hset(k.work(ident), mapping=beat.work)  # type: ignore[arg-type]
            pipe.expire(k.work(ident), max(1, int(beat.ttl)))
        for name, count in (("processed", beat.processed), ("failed", beat.failed)):
            if count:
                pipe.incrby(k.stat(name), count)
                pipe.incrby(k.stat_daily(name, day), count)
                pipe.expire(k.stat_daily(name, day), DAILY_STATS_TTL)
        hour = int(now // 3600)
        for name, fields in (metrics or {}).items():
            for field_name, amount in fields.items():
                pipe.hincrby(k.metrics(name, hour), field_name, amount)
            pipe.expire(k.metrics(name, hour), METRICS_TTL)
            pipe.sadd(k.metrics_names(hour), name)
            pipe.expire(k.metrics_names(hour), METRICS_TTL)
        pipe.lrange(k.signals(ident), 0, -1)
        pipe.delete(k.signals(ident))
        try:
            results = pipe.execute()
        except redis.exceptions.ResponseError:
            # Redis refused the MULTI as a whole (OOM when full: HSET, INCRBY... are denied).
            # Liveness must not depend on room for the rest: EXPIRE is allowed when full, so
            # refresh the TTLs on their own, or peers would take us for dead and rerun our jobs.
            self._keep_alive(beat)
            raise
        return [s.decode() for s in reversed(results[-2])]

    def _keep_alive(self, beat: Heartbeat) -> None:
        """Only the TTLs of the process and work hashes (commands Redis runs even when full)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.expire(self.keys.process(beat.identity), max(1, int(beat.ttl)))
        pipe.expire(self.keys.work(beat.identity), max(1, int(beat.ttl)))
        try:
            pipe.execute()
        except RedisError:
            pass  # the caller raises the heartbeat's own error

    def write_work(self, identity: str, work: dict[str, str], *, busy: int, ttl: float) -> None:
        """Between heartbeats: replace the work hash (the Busy page) and the busy count.

        One MULTI, so a reader never sees the hash half written or disagreeing with ``busy``.
        It refreshes the process hash's TTL too: it only runs while the process is alive, and
        the HSET would otherwise leave a hash without a TTL if the process had expired.
        """
        k, ttl_s = self.keys, max(1, int(ttl))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(k.work(identity))
        if work:
            # redis-py's mapping key type is invariant: no dict[str, str] fits it
            pipe.hset(k.work(identity), mapping=work)  # type: ignore[arg-type]
            pipe.expire(k.work(identity), ttl_s)
        pipe.hset(k.process(identity), "busy", busy)
        pipe.expire(k.process(identity), ttl_s)
        pipe.execute()

    def unregister(self, identity: str, *, guard: bool = False) -> int:
        """Remove a process; returns jobs left in its in-progress lists (-1: guard found it)."""
        k = self.keys
        return self._unregister(
            keys=[k.processes, k.process(identity), k.work(identity), k.wip(identity),
                  k.wip(identity, "sched"), k.wip_registry],
            args=[identity, "1" if guard else "0"])

    def orphans(self) -> list[str]:
        """Identities in the in-progress registry whose heartbeat hash has expired."""
        identities = [i.decode()
                      for i in cast("list[bytes]", self.client.hkeys(self.keys.wip_registry))]
        if not identities:
            return []
        pipe = self.client.pipeline(transaction=False)
        for ident in identities:
            pipe.exists(self.keys.process(ident))
        return [i for i, alive in zip(identities, pipe.execute()) if not alive]

    def describe(self) -> str:
        """Where this storage points, for banners and logs (no password)."""
        pool = self.client.connection_pool
        kwargs = pool.connection_kwargs
        service = getattr(pool, "service_name", None)
        if service:  # Sentinel: the master's address may change
            return f"sentinel master {service}/{kwargs.get('db', 0)}"
        where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '')}"
        namespace = f" namespace {self.keys.namespace!r}" if self.keys.namespace else ""
        return f"{where}/{kwargs.get('db', 0)}{namespace}"

    def disconnect(self) -> None:
        """Close every pooled connection (they reopen on the next command): the supervisor of
        ``kiq_worker --processes`` calls it before forking, so no child inherits its sockets."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()
        else:  # a cluster client: one pool per node, closed by close() (reopened on use)
            self.client.close()

    def round_trip_us(self) -> int:
        start = time.perf_counter()
        self.client.ping()
        return int((time.perf_counter() - start) * 1e6)

    def server_info(self) -> dict:
        return self.client.info()

    def config_get(self, name: str) -> dict:
        return {k if isinstance(k, str) else k.decode(): v if isinstance(v, str) else v.decode()
                for k, v in cast("dict[bytes | str, bytes | str]",
                                 self.client.config_get(name)).items()}



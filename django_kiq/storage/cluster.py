"""The storage layer on Redis Cluster (``KIQ["REDIS_CLUSTER_URL"]`` or ``REDIS_CLUSTER_NODES``).

:class:`ClusterStorage` is chosen once, by ``storage.from_settings``, when a cluster is
configured; single-Redis and Sentinel modes never import this module. It keeps every verb of
:class:`~django_kiq.storage.store.Storage` and the same Lua scripts; what differs is where keys
live (:class:`~django_kiq.storage.keys.ClusterKeys`: one hash tag per queue, one for the rest)
and the few steps that must cross from one slot to another. Each such step is ordered so that
a crash between its halves can run a job twice but never lose it:

- **Fetch and acknowledge** stay single-slot: each queue has its own in-progress lane per
  process, in the queue's slot; ``fetch.lua`` runs once per queue (strict or weighted order,
  until enough jobs were taken).
- **Settle** (a finished job's retry, death, requeue and cleanups): first the effects in the
  global slot (retry/dead sets, unique lock, counters, result, batch), ``settle.lua`` itself
  run in one MULTI over a staging list; then ``cluster_move.lua`` takes the job out of its lane
  (and, for a requeue onto its own queue, pushes it in that same step). A crash between the two
  leaves the job in the lane: its process's recovery pushes it back to its queue, so a job sent
  to the retry set may run once more from its queue (duplicate, not loss).
- **Pushes from scripts over global keys** (unique jobs, batches, cron, django.tasks, "retry
  now" from the admin): the script pushes onto the queue's *outbox*, a list in the global slot,
  in its own atomic step; the caller then relays the outbox to the queue (LPUSH, then LREM from
  the outbox). A crash in between leaves the job in the outbox, which every worker's heartbeat
  relays (``orphans``); two relays of the same job may both push it (duplicate, not loss).
- **The poller** claims due jobs into its lane in the global slot (``due.lua``, as in one
  Redis), pushes each to its queue, then removes it from the lane.

Thread-safety as in Storage: the cluster client is thread-safe; the only state is caches
(single dict/set operations).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.typing import EncodableT, KeyT

from .base import ScriptArg
from .batches import Succeeded
from .control import UniquePush, unique_holders, unique_push_call
from .keys import ClusterKeys
from .results import PRIORITY_SCAN_LIMIT
from .limits import LimitState, _decode_state, _int, _read_state
from .sets import TRASH_TTL, UNIQUE_PAGE, NEEDLES, Leaving, LeavingOf
from .store import (LUA_DIR, LUA_INCLUDE, PUSH_BATCH, REGISTER_EVERY, PollerOutlook, Settle,
                    Storage)

#: Scripts over global keys that push onto queues: in cluster mode they push onto outboxes.
OUTBOX_SCRIPTS = frozenset({"unique_push", "periodic_fire", "batch", "set_move",
                            "set_requeue_batch"})
RELAY_PAGE = 500
RELAY_EVERY = 1.0  # seconds between two sweeps of the outboxes by one process
PAUSED_EVERY = 1.0  # seconds a process trusts its copy of the paused queues (see fetch)
LANES_EVERY = 5.0  # seconds between two records of the same in-progress lane (_ensure_lanes)


def _lua(name: str) -> str:
    return LUA_INCLUDE.sub(lambda m: (LUA_DIR / m.group(1)).read_text(),
                           (LUA_DIR / f"{name}.lua").read_text())


def _payload_queue(raw: bytes) -> str:
    try:
        value = json.loads(raw).get("queue")
    except (ValueError, AttributeError, RecursionError):
        return "default"
    return value if isinstance(value, str) and value else "default"


class _OutboxScript(Script):
    """A script of OUTBOX_SCRIPTS: each queue key it is given is swapped for the queue's outbox
    (so every key is in the global slot), and the outboxes are relayed once it ran. Called with
    a pipeline, the caller relays after the pipeline ran (``push_unique``)."""

    def __init__(self, store: ClusterStorage, text: str):
        super().__init__(store.client, text)
        self._store = store

    def __call__(self, keys: Sequence[KeyT] | None = None,
                 args: Iterable[EncodableT] | None = None, client: Any = None) -> Any:
        routed, queues = self._store.route(keys or ())
        result = super().__call__(keys=routed, args=args or (), client=client)
        if queues and client is None:
            self._store.relay(queues)
        return result


class ClusterStorage(Storage):
    keys: ClusterKeys
    # Reads over many queues come from several nodes: no MULTI can span them (sets.py).
    atomic_snapshots = False

    def __init__(self, client: Any, keys: ClusterKeys, **kwargs: Any):
        self._origins: dict[bytes, str] = {}  # payload -> the queue whose lane holds it
        # (identity, queue) -> when this process last recorded that lane (see _ensure_lanes)
        self._lanes: dict[tuple[str, str], float] = {}
        self._next_sweep = 0.0
        self._paused_cache: tuple[float, frozenset[str]] = (0.0, frozenset())
        super().__init__(client, keys, **kwargs)
        self._move = self._script("cluster_move")
        self._cluster_unregister = self._script("cluster_unregister")

    def _script(self, name: str) -> Script:
        if name in OUTBOX_SCRIPTS:
            return _OutboxScript(self, _lua(name))
        return self.client.register_script(_lua(name))

    @property
    def cluster(self) -> RedisCluster:
        """The client, typed as what it is (StorageBase declares redis.Redis)."""
        return cast("RedisCluster", self.client)

    def dedicated(self) -> ClusterStorage:
        """The cluster client keeps its own connection pool per node: no dedicated copy."""
        return self

    def disconnect(self) -> None:
        """Close every node's pooled connections, keeping the client usable (they reopen on
        the next command). ``RedisCluster.close()`` would drop the node objects themselves: the
        supervisor of ``kiq_worker --processes`` calls this before forking and then goes on
        using the client to recover a dead child's jobs at once."""
        for node in self.cluster.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()

    def describe(self) -> str:
        nodes = self.cluster.get_nodes()
        seed = nodes[0].name if nodes else "?"
        namespace = f" namespace {self.keys.namespace!r}" if self.keys.namespace else ""
        return f"redis cluster via {seed} ({len(nodes)} nodes){namespace}"

    def server_info(self) -> dict:
        """INFO of the master holding the global keys (the dashboard's Redis panel)."""
        node = self.cluster.get_node_from_key(self.keys.queues)
        return cast("dict", self.client.info(target_nodes=node))

    def config_get(self, name: str) -> dict:
        """The value on every master; the first one that differs from the others wins, so the
        eviction check warns if any master may evict."""
        seen: dict = {}
        for node in self.cluster.get_primaries():
            reply = cast("dict", self.client.config_get(name, target_nodes=node))
            values = {_text(k): _text(v) for k, v in reply.items()}
            if not seen or values.get(name) != "noeviction":
                seen = values
        return seen

    def _global_node(self) -> Any:
        return self.cluster.get_node_from_key(self.keys.schedule)

    def server_time(self) -> float:
        """TIME of the master holding the schedule and retry sets: the clock due.lua judges
        by there."""
        seconds, micros = self.client.time(target_nodes=self._global_node())
        return seconds + micros / 1e6

    def poller_outlook(self, set_names: Iterable[str], identity: str,
                       limit: int) -> PollerOutlook:
        """Storage.poller_outlook's reads, then TIME of the same node (ClusterPipeline
        refuses keyless commands): two round trips, both to the global slot's master."""
        names = list(set_names)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.zrange(self.keys.sorted_set(name), 0, 0, withscores=True)
        pipe.lrange(self.keys.wip(identity, "sched"), 0, limit - 1)
        *firsts, leftovers = pipe.execute()
        scores = [rows[0][1] for rows in firsts if rows]
        return PollerOutlook(next_due=min(scores) if scores else None,
                             server_time=self.server_time(), leftovers=leftovers)

    def limit_states(self, names: Sequence[tuple[str, float]]) -> tuple[float, list[LimitState]]:
        """LimitOps.limit_states with Redis's clock asked on its own (ClusterPipeline refuses
        keyless TIME): the same reads otherwise."""
        now = self.server_time()
        pipe = self.client.pipeline(transaction=False)
        for name, _ in names:
            pipe.hgetall(self.keys.limit(name, "meta"))
        metas = [{_text(k): _text(v) for k, v in m.items()} for m in pipe.execute()]
        pipe = self.client.pipeline(transaction=False)
        for (name, _), meta in zip(names, metas):
            _read_state(pipe, meta.get("kind", ""), self.keys.limit(name))
        out = []
        for (name, last), meta, raw in zip(names, metas, pipe.execute()):
            kind = meta.get("kind", "")
            out.append(LimitState(
                name=name, last_used=last, kind=kind, size=_int(meta.get("size")),
                span=_int(meta.get("span")) / 1000.0, acquired=_int(meta.get("acquired")),
                throttled=_int(meta.get("throttled")), rescheduled=_int(meta.get("rescheduled")),
                state=_decode_state(kind, raw)))
        return now, out

    # -- queues and outboxes ----------------------------------------------------------------

    def route(self, keys: Iterable[Any]) -> tuple[list[Any], list[str]]:
        """``keys`` with each queue list swapped for its outbox, and those queues' names."""
        routed, queues = [], []
        for key in keys:
            name = self.keys.queue_of(key) if isinstance(key, str) else None
            if name is None:
                routed.append(key)
            else:
                routed.append(self.keys.outbox(name))
                queues.append(name)
        return routed, queues

    def relay(self, queues: Iterable[str]) -> int:
        """Move what the outboxes of ``queues`` hold to the tails of their queues, oldest first:
        pushed first, then removed from the outbox (a crash in between: pushed twice)."""
        moved = 0
        for queue in dict.fromkeys(queues):
            box, dest = self.keys.outbox(queue), self.keys.queue(queue)
            while True:
                items = cast("list[bytes]", self.client.lrange(box, -RELAY_PAGE, -1))
                if not items:
                    break
                self.client.lpush(dest, *reversed(items))
                pipe = self.client.pipeline(transaction=False)
                for raw in items:
                    pipe.execute_command("LREM", box, -1, raw)
                pipe.execute()
                moved += len(items)
                if len(items) < RELAY_PAGE:
                    break
        return moved

    def relay_all(self, now: float | None = None) -> int:
        """Relay every outbox left non-empty (a caller died between a script and its relay);
        at most once per RELAY_EVERY seconds per process."""
        now = time.monotonic() if now is None else now
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + RELAY_EVERY
        names = sorted({_text(n) for n in cast("set[bytes]",
                                                 self.client.smembers(self.keys.queues))})
        if not names:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.llen(self.keys.outbox(name))
        return self.relay([n for n, size in zip(names, pipe.execute()) if size])

    def push(self, items: Sequence[tuple[str, bytes]]) -> None:
        """As Storage.push, but a queue's registration is its own command (``queues`` is in
        the global slot) and pushes to several queues are a plain pipeline, not one MULTI."""
        for start in range(0, len(items), PUSH_BATCH):
            by_queue: dict[str, list[bytes]] = {}
            for queue, raw in items[start:start + PUSH_BATCH]:
                by_queue.setdefault(queue, []).append(raw)
            now = time.monotonic()
            stale = [q for q in by_queue
                     if now - self._registered.get(q, -REGISTER_EVERY) >= REGISTER_EVERY]
            if len(by_queue) == 1 and not stale:
                [(queue, raws)] = by_queue.items()
                self.client.lpush(self.keys.queue(queue), *raws)
                continue
            pipe = self.client.pipeline(transaction=False)
            if stale:
                pipe.sadd(self.keys.queues, *stale)
            for queue, raws in by_queue.items():
                pipe.lpush(self.keys.queue(queue), *raws)
            pipe.execute()
            for queue in stale:
                self._registered[queue] = now

    def push_unique(self, items: Sequence[UniquePush]) -> list[str | None]:
        """One unique_push.lua call per job (ClusterPipeline cannot run scripts), each onto
        its queue's outbox, then the outboxes relayed."""
        replies = [self._unique_push(keys=keys, args=args, client=self.client)
                   for keys, args in (unique_push_call(self.keys, item) for item in items)]
        self.relay([item.queue for item in items if item.at is None])
        return unique_holders(replies)

    def release_unique(self, pairs: Sequence[tuple[str, str]]) -> None:
        for digest, jid in pairs:
            self._unlock(keys=[self.keys.unique(digest)], args=[jid])

    def push_task(self, result_id: str, record: Mapping[str, str], *, queue: str, raw: bytes,
                  priority: int, ttl: int) -> None:
        """A django.tasks job placed by priority: the result record and the queue's
        registration first (global slot, one MULTI), then task_enqueue.lua's placement in the
        queue's own slot, where the script's writes of record and registration go to a scratch
        key deleted right after. A crash in between leaves a record whose job was never pushed
        (the caller got the error), never a job without its record."""
        key, ttl_s = self.keys.job_result(result_id), max(1, int(ttl))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if record:
            pipe.hset(key, mapping=dict(record))  # type: ignore[arg-type]
        pipe.expire(key, ttl_s)
        pipe.sadd(self.keys.queues, queue)
        pipe.execute()
        scratch = self.keys.queue_scratch(queue, secrets.token_hex(8))
        try:
            self._task_enqueue(keys=[scratch, scratch, self.keys.queue(queue)],
                               args=["q", raw, int(priority), queue, ttl_s, PRIORITY_SCAN_LIMIT])
        finally:
            self.client.delete(scratch)

    def pause_queue(self, name: str) -> None:
        super().pause_queue(name)
        self.client.sadd(self.keys.queue_paused(name), name)

    def resume_queue(self, name: str) -> None:
        self.client.srem(self.keys.queue_paused(name), name)
        super().resume_queue(name)

    def _remove(self, kind: str, key: str, raws: Sequence[bytes],
                leavings: Sequence[Leaving | None]) -> int:
        """A queue's members leave in their slot first (LREM), then what leaves with them
        (locks, batch counts) in the global slot, as set_remove.lua's "gone" members. A crash
        in between leaves a lock to expire by its TTL and a batch waiting for the job."""
        if kind == "list" or (kind == "gone" and not key.startswith(f"{{{self.keys.tag}}}")):
            if kind == "list":
                pipe = self.client.pipeline(transaction=False)
                for raw in raws:
                    pipe.execute_command("LREM", key, 1, raw)
                gone = [(raw, leaving) for raw, leaving, n in zip(raws, leavings, pipe.execute())
                        if n]
            else:
                gone = list(zip(raws, leavings))
            if gone:
                super()._remove("gone", self.keys.schedule, [g[0] for g in gone],
                                [g[1] for g in gone])
            return len(gone)
        return super()._remove(kind, key, raws, leavings)

    def queue_clear(self, name: str, leaving_of: LeavingOf | None = None) -> int:
        """Rename the queue aside within its slot, forget its registration, then release what
        leaves with its jobs page by page (Storage._clear's steps, keys of the queue's slot)."""
        self.forget_registration(name)
        key, trash = self.keys.queue(name), self.keys.queue_trash(name, secrets.token_hex(8))
        count = int(self._set_clear(keys=[key, trash, key], args=["list", "", TRASH_TTL]))
        self.client.srem(self.keys.queues, name)
        if count and leaving_of is not None:
            start = 0
            while start < count:
                read, *members = self._set_unique_scan(
                    keys=[trash], args=["list", start, UNIQUE_PAGE, *NEEDLES])
                self._remove("gone", trash, members, [leaving_of(raw) for raw in members])
                start += max(1, int(read))
                if int(read) < UNIQUE_PAGE:
                    break
        self.client.unlink(trash)
        return count

    def record_cancellation(self, jid: str, *, by: str = "", where: str = "",
                            member: bytes = b"", container: str = "",
                            digest: str = "", record: bool = True) -> bool:
        """A job waiting in a queue: the cancellation is recorded first (a worker that fetches
        it anyway drops it), then the member leaves its queue, then it is counted and its lock
        released (global slot)."""
        if where != "list":
            return super().record_cancellation(jid, by=by, where=where, member=member,
                                               container=container, digest=digest,
                                               record=record)
        super().record_cancellation(jid, by=by, record=record)
        if not self.client.execute_command("LREM", self.keys.queue(container), 1, member):
            return False
        self.client.incr(self.keys.stat("cancelled"))
        if digest:
            self._unlock(keys=[self.keys.unique(digest)], args=[jid])
        return True

    # -- worker: fetch, settle ------------------------------------------------------------------

    def _origin(self, raw: bytes) -> str:
        return self._origins.get(raw) or _payload_queue(raw)

    def _ensure_lanes(self, identity: str, queues: Iterable[str]) -> None:
        """Record the queues ``identity`` takes jobs from before its first fetch there, so a
        recovery finds every lane; again every LANES_EVERY seconds, in case a peer took this
        process for dead (a long pause), recovered its jobs and dropped the record."""
        now = time.monotonic()
        new = [q for q in dict.fromkeys(queues)
               if now - self._lanes.get((identity, q), -LANES_EVERY) >= LANES_EVERY]
        if new:
            self.client.sadd(self.keys.wip_queues(identity), *new)
            self._lanes.update(((identity, q), now) for q in new)

    def _paused(self) -> frozenset[str]:
        at, names = self._paused_cache
        if time.monotonic() - at >= PAUSED_EVERY:
            names = frozenset(_text(n) for n in cast(
                "set[bytes]", self.client.smembers(self.keys.paused_queues)))
            self._paused_cache = (time.monotonic(), names)
        return names

    def fetch(self, identity: str, queues: Sequence[str], count: int,
              acks: Sequence[bytes] = (), settles: Sequence[Settle | Succeeded] = (),
              ) -> tuple[list[tuple[str, bytes]], set[str]]:
        """Settle, then fetch.lua once per queue in the given order until ``count`` jobs were
        taken; each call also acknowledges that queue's finished jobs. Queues not reached are
        reported paused from a copy of the paused set at most PAUSED_EVERY seconds old."""
        if settles:
            self.settle(identity, settles)
        pending: dict[str, list[bytes]] = {}
        for raw in acks:
            pending.setdefault(self._origin(raw), []).append(raw)
        self._ensure_lanes(identity, [*queues, *pending])
        jobs: list[tuple[str, bytes]] = []
        paused: set[str] = set()
        checked: set[str] = set()
        for queue in [*queues, *(q for q in pending if q not in queues)]:
            want = max(count - len(jobs), 0) if queue in queues else 0
            mine = pending.pop(queue, [])
            if not want and not mine:
                continue
            checked.add(queue)
            flat = self._fetch(keys=[self.keys.queue_wip(identity, queue),
                                     self.keys.queue_paused(queue), self.keys.queue(queue)],
                               args=[want, len(mine), *mine, queue])
            npaused = int(flat[0])
            if npaused:
                paused.add(queue)
            rest = flat[1 + npaused:]
            for i in range(1, len(rest), 2):
                self._origins[rest[i]] = queue
                jobs.append((queue, rest[i]))
        for raw in acks:
            self._origins.pop(raw, None)
        paused |= {q for q in self._paused() if q in queues and q not in checked}
        return jobs, paused

    def _lane_queues(self, identity: str) -> list[str]:
        """The queues ``identity`` may have in-progress lanes in: those it recorded, and every
        registered or paused queue (a lane taken after its record was dropped is found too)."""
        pipe = self.client.pipeline(transaction=False)
        for key in (self.keys.wip_queues(identity), self.keys.queues, self.keys.paused_queues):
            pipe.smembers(key)
        return sorted({_text(q) for names in pipe.execute() for q in names})

    def wip_items(self, identity: str, lane: str = "fetch") -> list[bytes]:
        """The jobs in every per-queue lane of ``identity`` (or its poller's lane)."""
        if lane != "fetch":
            return super().wip_items(identity, lane)
        queues = self._lane_queues(identity)
        if not queues:
            return []
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.lrange(self.keys.queue_wip(identity, queue), 0, -1)
        out = []
        for queue, items in zip(queues, pipe.execute()):
            for raw in items:
                self._origins[raw] = queue
                out.append(raw)
        return out

    def settle(self, identity: str, entries: Sequence[Settle | Succeeded], *,
               lane: str = "fetch", guard: bool = False,
               now: float | None = None) -> list[int] | None:
        """Storage.settle in two steps: the global effects, then the lanes (module docstring).

        Returns one flag per entry: 1 if the job was still in its lane, else 0. With ``guard``,
        None if the owner is alive (checked first; settle.lua checks again in step one).
        """
        if not entries:
            return []
        now = time.time() if now is None else now
        if guard and self.client.exists(self.keys.process(identity)):
            return None
        if self._settle_effects(identity, entries, lane, guard, now) is None:
            return None
        flags = self._settle_moves(identity, entries, lane)
        for entry in entries:
            self._origins.pop(entry.old, None)
        return flags

    def _settle_effects(self, identity: str, entries: Sequence[Settle | Succeeded], lane: str,
                        guard: bool, now: float) -> bool | None:
        """settle.lua on the global slot for the entries' effects there: their payloads are
        put in a staging list (so settle.lua finds them "in progress") in the same MULTI, which
        empties it again. Requeues lose their move here (step two does it) but keep their
        cleanups; queues jobs land on are registered. None if the guard stopped it."""
        staged = [e for e in (self._effect(e) for e in entries) if e is not None]
        register = sorted({e.dest for e in entries
                           if isinstance(e, Settle) and e.kind in ("q", "l")})
        if not staged and not register:
            return True
        scratch = self.keys.settling(identity)
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=True)
            if staged:
                keys, args, _ = self._settle_args(identity, staged, lane, guard, now)
                keys = [scratch if k == keys[0] else k for k in keys]
                pipe.rpush(scratch, *(e.old for e in staged))
                # ClusterPipeline blocks its evalsha() helper; the command itself is fine
                # in a single-slot MULTI.
                pipe.execute_command("EVALSHA", self._settle.sha, len(keys), *keys, *args)
                pipe.delete(scratch)
            if register:
                pipe.sadd(self.keys.queues, *register)
            try:
                replies = pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.client.script_load(self._settle.script)
                continue
            if staged and replies[1] and replies[1][0] == -1:
                return None
            return True
        return True  # unreachable: the loop returns or raises

    @staticmethod
    def _effect(entry: Settle | Succeeded) -> Settle | Succeeded | None:
        """What of ``entry`` happens in the global slot (None: nothing)."""
        if isinstance(entry, Succeeded) or entry.kind in ("z", "d"):
            return entry
        cleanups = (entry.unlock or entry.drop_cursor or entry.count or entry.result is not None
                    or entry.batch is not None)
        if not cleanups:
            return None
        return entry if entry.kind == "x" else replace(entry, kind="x", dest="")

    def _settle_moves(self, identity: str, entries: Sequence[Settle | Succeeded],
                      lane: str) -> list[int]:
        """Step two: each job leaves its lane (cluster_move.lua, one call per lane); a requeue
        onto the lane's own queue happens in that call, one onto another slot's queue is
        pushed just before it."""
        groups: dict[str, tuple[str, list[ScriptArg], list[int]]] = {}
        pushes: list[tuple[str, str, bytes]] = []
        for position, e in enumerate(entries):
            source = self._origin(e.old) if lane == "fetch" else None
            if source is None:  # the poller's lane, in the global slot
                key = dest = self.keys.wip(identity, lane)
            else:
                key, dest = self.keys.queue_wip(identity, source), self.keys.queue(source)
            side, new = "x", b""
            if isinstance(e, Settle) and e.kind in ("q", "l"):
                if e.dest == source:
                    side, new = e.kind, e.new
                else:
                    pushes.append((self.keys.queue(e.dest), e.kind, e.new))
            _, args, positions = groups.setdefault(key, (dest, [], []))
            args.extend([side, e.old, new])
            positions.append(position)
        if pushes:
            pipe = self.client.pipeline(transaction=False)
            for dest_key, side, new in pushes:
                if side == "q":
                    pipe.rpush(dest_key, new)
                else:
                    pipe.lpush(dest_key, new)
            pipe.execute()
        flags = [0] * len(entries)
        for key, (dest, args, positions) in groups.items():
            for position, flag in zip(positions, self._move(keys=[key, dest], args=args)):
                flags[position] = int(flag)
        return flags

    # -- processes ----------------------------------------------------------------------------

    def unregister(self, identity: str, *, guard: bool = False) -> int:
        k = self.keys
        if guard and self.client.exists(k.process(identity)):
            return -1
        queues = self._lane_queues(identity)
        left = 0
        if queues:
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(k.queue_wip(identity, queue))
            left = sum(int(n) for n in pipe.execute())
        result = int(self._cluster_unregister(
            keys=[k.processes, k.process(identity), k.work(identity), k.wip(identity, "sched"),
                  k.wip_registry, k.wip_queues(identity)],
            args=[identity, "1" if guard else "0", left]))
        if result == 0:
            self._lanes = {lane: at for lane, at in self._lanes.items() if lane[0] != identity}
        return result

    def orphans(self) -> list[str]:
        """Storage.orphans, after relaying outboxes a dead caller left (every heartbeat calls
        this: the outbox sweep rides on the orphan recovery it is part of)."""
        self.relay_all()
        return super().orphans()

    def in_progress(self) -> list[bytes]:
        identities = [_text(i) for i in cast("list[bytes]",
                                             self.client.hkeys(self.keys.wip_registry))]
        if not identities:
            return []
        pipe = self.client.pipeline(transaction=False)
        for identity in identities:
            pipe.smembers(self.keys.wip_queues(identity))
        lanes = [self.keys.queue_wip(identity, _text(q))
                 for identity, queues in zip(identities, pipe.execute()) for q in queues]
        pipe = self.client.pipeline(transaction=False)
        for lane in lanes:
            pipe.lrange(lane, 0, -1)
        return [raw for items in pipe.execute() for raw in items]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ThreadedAsyncStorage:
    """Async enqueueing (``aenqueue``) in cluster mode: the sync :class:`ClusterStorage`'s
    verbs run on a thread of the loop's default executor (``asyncio.to_thread``), so a job
    pushed from a coroutine takes exactly the steps of one pushed from sync code (outboxes,
    per-slot pipelines) without a second, asyncio, implementation of them."""

    def __init__(self, store: ClusterStorage):
        self.store = store

    async def push(self, items: Sequence[tuple[str, bytes]]) -> None:
        await asyncio.to_thread(self.store.push, items)

    async def schedule(self, items: Sequence[tuple[float, bytes]],
                       set_name: str = "schedule") -> None:
        await asyncio.to_thread(self.store.schedule, items, set_name)

    async def push_unique(self, items: Sequence[UniquePush]) -> list[str | None]:
        return await asyncio.to_thread(self.store.push_unique, items)

    async def close(self) -> None:
        """The sync client is shared with the rest of the process: nothing to close here."""

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
- **Pushes from scripts over global keys** (unique jobs, batches, cron, "retry now" from the
  admin) go through the queue's outbox, relayed at once and by every worker's heartbeat
  (``orphans``): :mod:`django_kiq.storage.cluster_base`, with the rest of the enqueue side and
  the readers.
- **The poller** claims due jobs into its lane in the global slot (``due.lua``, as in one
  Redis), pushes each to its queue, then removes it from the lane.

Thread-safety as in Storage: the cluster client is thread-safe; the only state is caches
(single dict operations). The fetcher, the processors' settles and the heartbeat's recovery of
one process share one ClusterStorage (``dedicated()`` returns it), so the cache of which queue's
lane holds each fetched payload is seen by all of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, cast

import redis

from .base import ScriptArg
from .batches import Succeeded
from .cluster_base import ClusterBase, ThreadedAsyncStorage, _text
from .keys import ClusterKeys
from .store import Settle

__all__ = ["ClusterStorage", "ThreadedAsyncStorage"]

PAUSED_EVERY = 1.0  # seconds a process trusts its copy of the paused queues (see fetch)
LANES_EVERY = 5.0  # seconds between two records of the same in-progress lane (_ensure_lanes)


def _payload_queue(raw: bytes) -> str:
    """The queue a payload names: where its lane is when this process did not fetch or read
    it itself (untrusted input: "default" when it names none)."""
    try:
        value = json.loads(raw).get("queue")
    except (ValueError, AttributeError, RecursionError):
        return "default"
    return value if isinstance(value, str) and value else "default"


class ClusterStorage(ClusterBase):
    """ClusterBase plus the worker's side: per-queue fetch, two-step settle, recovery."""

    def __init__(self, client: Any, keys: ClusterKeys, **kwargs: Any):
        self._origins: dict[bytes, str] = {}  # payload -> the queue whose lane holds it
        # (identity, queue) -> when this process last recorded that lane (see _ensure_lanes)
        self._lanes: dict[tuple[str, str], float] = {}
        self._paused_cache: tuple[float, frozenset[str]] = (0.0, frozenset())
        super().__init__(client, keys, **kwargs)
        self._move = self._script("cluster_move")
        self._cluster_unregister = self._script("cluster_unregister")

    def dedicated(self) -> ClusterStorage:
        """The cluster client keeps its own connection pool per node: no dedicated copy (and
        the payload -> lane cache must be shared by the fetcher and the settling threads)."""
        return self

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

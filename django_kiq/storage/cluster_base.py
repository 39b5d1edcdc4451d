"""Redis Cluster mode, part one: the client, the routing of scripts, the enqueue side and the
readers (the admin's and the API's verbs). The worker's side (fetch, settle, recovery) and the
overview of the mode are in :mod:`django_kiq.storage.cluster`, whose ClusterStorage extends
:class:`ClusterBase`.

Pushes from scripts over global keys (unique jobs, batches, cron, "retry now" from the admin)
go through the queue's *outbox*: the script, whose keys must all share the ``{kiq}`` slot, is
handed the outbox (a list in that slot) in place of the queue and pushes the job there with its
other writes, atomically; :meth:`ClusterBase.relay` then copies the outbox onto the queue
(LPUSH) and removes what it copied (LREM). A crash in between leaves the job in the outbox,
which every worker's heartbeat relays (``relay_all``); two relays of the same job may both push
it (a duplicate, not a loss). The other verbs that touch a queue and the global keys together
(delete, clear, cancel, django.tasks placement) run their queue step and their global step one
after the other, in the order docs/reliability.md "Redis Cluster" lists.

Called from any thread of a web or worker process, like Storage; the only state is the time
of the next outbox sweep.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.typing import EncodableT, KeyT

from .batches import BatchMark, ResultWrite
from .control import UniquePush, unique_holders, unique_push_call
from .keys import ClusterKeys
from .limits import LimitState
from .results import PRIORITY_SCAN_LIMIT
from .sets import TRASH_TTL, Leaving, LeavingOf
from .store import PUSH_BATCH, REGISTER_EVERY, PollerOutlook, Storage, lua_text

#: Scripts over global keys that push onto queues: in cluster mode they push onto outboxes.
OUTBOX_SCRIPTS = frozenset({"unique_push", "periodic_fire", "batch", "set_move",
                            "set_requeue_batch"})
RELAY_PAGE = 500
RELAY_EVERY = 1.0  # seconds between two sweeps of the outboxes by one process


class _OutboxScript(Script):
    """A script of OUTBOX_SCRIPTS: each queue key it is given is swapped for the queue's outbox
    (so every key is in the global slot), and the outboxes are relayed once it ran. Called with
    a pipeline, the caller relays after the pipeline ran (``push_unique``)."""

    def __init__(self, store: ClusterBase, text: str):
        super().__init__(store.client, text)
        self._store = store

    def __call__(self, keys: Sequence[KeyT] | None = None,
                 args: Iterable[EncodableT] | None = None, client: Any = None) -> Any:
        routed, queues = self._store.route(keys or ())
        result = super().__call__(keys=routed, args=args or (), client=client)
        if queues and client is None:
            self._store.relay(queues)
        return result


class ClusterBase(Storage):
    """Storage on Redis Cluster: the client, the scripts' routing, the enqueue side and the
    readers (see the module docstring); :class:`~django_kiq.storage.cluster.ClusterStorage`
    adds the worker's side."""

    keys: ClusterKeys
    # Reads over many queues come from several nodes: no MULTI can span them (sets.py).
    atomic_snapshots = False
    multi_spans_queues = False

    def __init__(self, client: Any, keys: ClusterKeys, **kwargs: Any):
        self._next_sweep = 0.0  # monotonic time of the next outbox sweep (relay_all)
        super().__init__(client, keys, **kwargs)

    def _script(self, name: str) -> Script:
        if name in OUTBOX_SCRIPTS:
            return _OutboxScript(self, lua_text(name))
        return self.client.register_script(lua_text(name))

    @property
    def cluster(self) -> RedisCluster:
        """The client, typed as what it is (StorageBase declares redis.Redis)."""
        return cast("RedisCluster", self.client)

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
        return now, self._limit_states_of(names, pipe.execute())

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
        return self._empty_trash("list", trash, count, leaving_of)

    def record_cancellation(self, jid: str, *, by: str = "", where: str = "",
                            member: bytes = b"", container: str = "",
                            digest: str = "", record: bool = True,
                            result: ResultWrite | None = None,
                            batch: BatchMark | None = None) -> bool:
        """A job waiting in a queue: the cancellation is recorded first (a worker that fetches
        it anyway drops it), then the member leaves its queue, then, in one step on the global
        slot, it is counted, its lock released, its result and batch count written."""
        if where != "list":
            return super().record_cancellation(jid, by=by, where=where, member=member,
                                               container=container, digest=digest,
                                               record=record, result=result, batch=batch)
        super().record_cancellation(jid, by=by, record=record)
        if not self.client.execute_command("LREM", self.keys.queue(container), 1, member):
            return False
        super().record_cancellation(jid, by=by, where="gone", digest=digest, record=False,
                                    result=result, batch=batch)
        return True

    # -- worker: fetch, settle ------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ThreadedAsyncStorage:
    """Async enqueueing (``aenqueue``) in cluster mode: the sync cluster storage's
    verbs run on a thread of the loop's default executor (``asyncio.to_thread``), so a job
    pushed from a coroutine takes exactly the steps of one pushed from sync code (outboxes,
    per-slot pipelines) without a second, asyncio, implementation of them."""

    def __init__(self, store: ClusterBase):
        self.store = store

    async def push(self, items: Sequence[tuple[str, bytes]]) -> None:
        await asyncio.to_thread(self.store.push, items)

    async def schedule(self, items: Sequence[tuple[float, bytes]],
                       set_name: str = "schedule") -> None:
        await asyncio.to_thread(self.store.schedule, items, set_name)

    async def push_unique(self, items: Sequence[UniquePush]) -> list[str | None]:
        return await asyncio.to_thread(self.store.push_unique, items)

    async def write_job_results(self, items: Sequence[tuple[str, Mapping[str, str], int]], *,
                                status_if_new: bool = False) -> None:
        await asyncio.to_thread(self.store.write_job_results, items,
                                status_if_new=status_if_new)

    async def close(self) -> None:
        """The sync client is shared with the rest of the process: nothing to close here."""

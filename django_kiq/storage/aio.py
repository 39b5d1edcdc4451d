"""The storage verbs of async enqueueing, on redis-py's asyncio client.

Used by ``django_kiq.aclient`` (``await job.aenqueue(...)``) from whatever event loop awaits it:
an ASGI server's, ``asyncio.run``'s, the worker's own loop (an async job enqueueing another). It
sends the same commands as the sync :class:`~django_kiq.storage.store.Storage` through the same
Lua scripts (``lua/push.lua``, ``lua/unique_push.lua``) and key names (:class:`Keys`), so a job
pushed here is byte for byte one pushed there.

An asyncio connection belongs to the event loop that opened it, so there is one
:class:`AsyncStorage` per running loop (``get_default()``), built from the same settings as the
sync one and dropped with the loop (a weak reference); ``reset_default()`` drops them all when
``KIQ`` changes. As with the sync client, nothing retries a command by itself.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio

from .batches import result_write_commands
from .connection import CONNECT_TIMEOUT, SOCKET_TIMEOUT
from .control import UniquePush, unique_holders, unique_push_call
from .keys import Keys
from .store import LUA_DIR, PUSH_BATCH

MAX_CONNECTIONS = 50  # per event loop
_lock = threading.Lock()
_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncStorage] = (
    weakref.WeakKeyDictionary())


class AsyncStorage:
    """The async verbs: push, schedule, push_unique, write_job_results (the enqueue side
    only)."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys):
        self.client = client
        self.keys = keys
        self._push = client.register_script((LUA_DIR / "push.lua").read_text())
        self._unique_push = client.register_script((LUA_DIR / "unique_push.lua").read_text())

    async def push(self, items: Sequence[tuple[str, bytes]]) -> None:
        """LPUSH each (queue, payload) and register its queue, in one pipelined round trip per
        1,000 jobs (``push.lua``: the sync verb's registration cache is not worth keeping per
        loop, and registering costs no extra round trip)."""
        for start in range(0, len(items), PUSH_BATCH):
            by_queue: dict[str, list[bytes]] = {}
            for queue, raw in items[start:start + PUSH_BATCH]:
                by_queue.setdefault(queue, []).append(raw)
            if len(by_queue) == 1:
                [(queue, raws)] = by_queue.items()
                await self._push(keys=[self.keys.queues, self.keys.queue(queue)],
                                 args=[queue, *raws])
                continue
            pipe = self.client.pipeline(transaction=True)
            for queue, raws in by_queue.items():
                await self._push(keys=[self.keys.queues, self.keys.queue(queue)],
                                 args=[queue, *raws], client=pipe)
            await pipe.execute()

    async def schedule(self, items: Sequence[tuple[float, bytes]],
                       set_name: str = "schedule") -> None:
        key = self.keys.sorted_set(set_name)
        for start in range(0, len(items), PUSH_BATCH):
            await self.client.zadd(key, {raw: at for at, raw in items[start:start + PUSH_BATCH]})

    async def push_unique(self, items: Sequence[UniquePush]) -> list[str | None]:
        """Take each job's lock and push it (``unique_push.lua``), one round trip in all.

        Returns, per item, None when it was pushed, or the jid of the job holding the lock.
        """
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            keys, args = unique_push_call(self.keys, item)
            await self._unique_push(keys=keys, args=args, client=pipe)
        return unique_holders(await pipe.execute())

    async def write_job_results(self, items: Sequence[tuple[str, Mapping[str, str], int]], *,
                                status_if_new: bool = False) -> None:
        """The sync verb's result records (``storage.batches.result_write_commands``)."""
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        result_write_commands(pipe, self.keys, items, status_if_new=status_if_new)
        await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


def build_async_client(settings: Any) -> redis.asyncio.Redis:
    """An asyncio client to the server the sync client of ``settings`` talks to.

    ``KIQ["REDIS_URL"]`` (with ``REDIS_OPTIONS``), Sentinel's current master, or the address
    of the django-redis cache ``REDIS_CACHE_ALIAS`` (its own pool is sync: this one is new).
    """
    kwargs: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT,
                              "socket_connect_timeout": CONNECT_TIMEOUT,
                              "socket_keepalive": True, **(settings.redis_options or {})}
    if settings.redis_cache_alias:
        from django_redis import get_redis_connection

        pool = get_redis_connection(settings.redis_cache_alias).connection_pool
        known = ("host", "port", "db", "username", "password", "path", "ssl")
        conn = {k: v for k, v in pool.connection_kwargs.items() if k in known}
        if "path" in conn:
            return redis.asyncio.Redis(unix_socket_path=conn.pop("path"), **conn)
        return redis.asyncio.Redis(**conn)
    if settings.redis_sentinels:
        from redis.asyncio.sentinel import Sentinel
        from redis.connection import parse_url

        target = {k: v for k, v in parse_url(settings.redis_url).items()
                  if k in ("db", "username", "password")}
        sentinel = Sentinel([(str(h), int(p)) for h, p in settings.redis_sentinels],
                            sentinel_kwargs={"socket_timeout": CONNECT_TIMEOUT,
                                             **(settings.redis_sentinel_options or {})})
        return sentinel.master_for(settings.redis_sentinel_master or "", **{**target, **kwargs})
    # Hundreds of tasks may push at once: they queue for one of MAX_CONNECTIONS connections
    # instead of opening one each (or failing past the pool's limit).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url, **{"max_connections": MAX_CONNECTIONS, "timeout": SOCKET_TIMEOUT,
                               **kwargs})
    return redis.asyncio.Redis(connection_pool=pool)


def from_settings(settings: Any) -> AsyncStorage:
    if settings.redis_cluster_url or settings.redis_cluster_nodes:
        from . import get_default as sync_default
        from .cluster_base import ThreadedAsyncStorage

        # Redis Cluster: the sync cluster verbs, on a thread (storage/cluster.py says why).
        return ThreadedAsyncStorage(sync_default())  # type: ignore[arg-type, return-value]
    return AsyncStorage(build_async_client(settings), Keys(settings.namespace))


def get_default() -> AsyncStorage:
    """The running loop's :class:`AsyncStorage` (call it from a coroutine)."""
    loop = asyncio.get_running_loop()
    current = _defaults.get(loop)
    if current is None:
        from django_kiq.conf import get_settings

        with _lock:
            current = _defaults.get(loop)
            if current is None:
                current = _defaults[loop] = from_settings(get_settings())
    return current


def reset_default() -> None:
    """Forget every loop's storage (``KIQ`` changed); their connections close with them."""
    with _lock:
        _defaults.clear()

"""What :class:`~django_kiq.storage.store.Storage` gives the mixins its verbs are split into.

The mixins (``sets``, ``cron_state``, ``results``, ``control``, ``batches``, ``limits``) use
``self.client``, ``self.keys``, ``self._script`` and a few of each other's verbs; Storage sets and
defines them. This base declares them once for the type checker: it adds no behaviour and holds no
state.

redis-py types replies as ``bytes | str`` (it cannot know ``decode_responses``). Ours is never
set: the layer works on the exact bytes Redis holds, so the verbs ``cast`` replies to bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

    from .batches import BatchMark, ResultWrite
    from .keys import Keys

#: What a Lua script's ARGV accepts (redis-py encodes each).
ScriptArg = bytes | str | int | float


class StorageBase:
    client: redis.Redis
    keys: Keys
    #: Multi-queue reads (the dashboard's snapshot) in one MULTI; not on Redis Cluster, where
    #: queues live on different nodes (storage/cluster.py).
    atomic_snapshots: bool = True
    #: A MULTI may write a queue and the global keys together (a batch's pushes: batches.py);
    #: not on Redis Cluster, where a script pushes through the queue's outbox instead.
    multi_spans_queues: bool = True

    if TYPE_CHECKING:  # defined by Storage (store.py)
        def _script(self, name: str) -> Script: ...

        def forget_registration(self, queue: str) -> None: ...

        # defined by BatchOps (batches.py)
        def workflow_settle_args(self, result: ResultWrite | None,
                                 batch: BatchMark | None) -> tuple[list[str], list, str]: ...

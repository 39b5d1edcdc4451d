"""The only package that talks to Redis: key names, connections, Lua scripts and verbs.

``get_default()`` returns the process-wide :class:`Storage` built from the settings on first use;
``reset_default()`` (called when ``KIQ`` changes in tests) drops it.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from .batches import BatchMark, BatchPush, ResultWrite, Succeeded
from .control import Checkpoint, UniquePush
from .keys import Keys
from .sets import Leaving
from .store import TRANSIENT_ERRORS, Heartbeat, RedisError, Settle, Storage

if TYPE_CHECKING:
    from django_kiq.conf import KiqSettings

__all__ = ["Keys", "Storage", "Settle", "Heartbeat", "TRANSIENT_ERRORS", "RedisError",
           "UniquePush", "Checkpoint", "BatchMark", "BatchPush", "ResultWrite", "Succeeded",
           "Leaving",
           "get_default", "reset_default", "from_settings"]

_lock = threading.Lock()
_default: Storage | None = None


def from_settings(settings: KiqSettings) -> Storage:
    from .connection import build_client

    if settings.redis_cluster_url or settings.redis_cluster_nodes:
        return _cluster_from_settings(settings)
    client = build_client(settings.redis_url, settings.redis_cache_alias, settings.redis_options,
                          sentinels=settings.redis_sentinels,
                          sentinel_master=settings.redis_sentinel_master,
                          sentinel_options=settings.redis_sentinel_options)
    return Storage(client, Keys(settings.namespace), dead_max_jobs=settings.dead_max_jobs,
                   dead_timeout=settings.dead_timeout)


def _cluster_from_settings(settings: KiqSettings) -> Storage:
    """Redis Cluster mode (storage/cluster.py): its own key layout and settle steps."""
    from .cluster import ClusterStorage
    from .connection import build_cluster_client
    from .keys import ClusterKeys

    client = build_cluster_client(settings.redis_cluster_url, settings.redis_cluster_nodes,
                                  settings.redis_options)
    return ClusterStorage(client, ClusterKeys(settings.namespace),
                          dead_max_jobs=settings.dead_max_jobs,
                          dead_timeout=settings.dead_timeout)


def get_default() -> Storage:
    global _default
    current = _default
    if current is None:
        from django_kiq.conf import get_settings

        with _lock:
            if _default is None:
                _default = from_settings(get_settings())
            current = _default
    return current


def reset_default() -> None:
    global _default
    with _lock:
        _default = None
    aio = sys.modules.get(f"{__name__}.aio")  # loaded by async enqueueing only
    if aio is not None:
        aio.reset_default()

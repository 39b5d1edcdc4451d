"""Building the redis-py client django-kiq talks through.

Either our own client from ``KIQ["REDIS_URL"]``, a client of the master that Redis Sentinel
names (``KIQ["REDIS_SENTINELS"]`` + ``KIQ["REDIS_SENTINEL_MASTER"]``), redis-py's cluster client
(``KIQ["REDIS_CLUSTER_URL"]`` or ``KIQ["REDIS_CLUSTER_NODES"]``), or the client of a
django-redis cache (``KIQ["REDIS_CACHE_ALIAS"]``) so a project keeps one connection pool. Our own
clients never retry a command by themselves: a blind retry of a command that ran but whose reply
was lost could move a job twice, so the callers that can retry safely do it themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Blocking reads use at most 2 s, so a socket silent for this long means a dead peer.
SOCKET_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0
# What REDIS_URL still gives when Sentinel finds the master: which database, as whom.
URL_PARTS_FOR_SENTINEL = ("db", "username", "password")


def _client_kwargs(options: dict | None) -> dict[str, Any]:
    """Our clients' connection settings (``KIQ["REDIS_OPTIONS"]`` over them): never a blind
    retry, short connect, keepalive."""
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
        **(options or {}),
    }


def build_client(url: str, cache_alias: str | None, options: dict | None = None, *,
                 sentinels: Sequence[Sequence] = (), sentinel_master: str | None = None,
                 sentinel_options: dict | None = None) -> redis.Redis:
    if cache_alias:
        from django_redis import get_redis_connection

        return get_redis_connection(cache_alias)
    kwargs = _client_kwargs(options)
    if sentinels:
        return _sentinel_master(url, kwargs, sentinels, sentinel_master or "",
                                sentinel_options or {})
    return redis.Redis.from_url(url, **kwargs)


def build_cluster_client(url: str | None, nodes: Sequence[Sequence] = (),
                         options: dict | None = None) -> Any:
    """redis-py's cluster client (``redis.cluster.RedisCluster``) from a seed node's URL or
    (host, port) seed nodes.

    Like our other clients it never retries a command by itself (``Retry(NoBackoff(), 0)``): a
    connection error or CLUSTERDOWN reaches the caller, which backs off and tries again. Before
    raising, the client reloads the slot map from a live node, so after a failover the next
    command goes to the promoted replica. MOVED/ASK redirections (a slot that moved, not a lost
    reply) are still followed inside the client.
    """
    from redis.cluster import ClusterNode

    kwargs = _client_kwargs(options)
    cls = _cluster_class()
    if url:
        return cls.from_url(url, **kwargs)
    return cls(startup_nodes=[ClusterNode(str(h), int(p)) for h, p in nodes], **kwargs)


_CLUSTER: Any = None


def _cluster_class() -> Any:
    """RedisCluster whose pipelines accept MGET (defined on first use).

    redis-py's ClusterPipeline refuses ``mget()`` outright, even when every key is in one slot
    (ours are: the dashboard reads the daily counters, all under the global tag). Sent as a
    plain command it is routed by its keys like any other; keys of different slots still fail
    (CROSSSLOT), which is what should happen.
    """
    global _CLUSTER
    if _CLUSTER is None:
        from redis.cluster import ClusterPipeline, RedisCluster

        class KiqClusterPipeline(ClusterPipeline):
            def mget(self, keys: Any, *args: Any) -> Any:
                names = [keys, *args] if isinstance(keys, (str, bytes)) else [*keys, *args]
                return self.execute_command("MGET", *names)

        class KiqCluster(RedisCluster):
            def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
                pipe = super().pipeline(transaction, shard_hint)
                pipe.__class__ = KiqClusterPipeline
                return pipe

        _CLUSTER = KiqCluster
    return _CLUSTER


def _sentinel_master(url: str, kwargs: dict, sentinels: Sequence[Sequence], master: str,
                     sentinel_options: dict) -> redis.Redis:
    """A client that always talks to the current master of ``master``.

    redis-py asks the sentinels for the master's address whenever it opens a connection. After a
    failover, a connection still open to the old master (now a replica) gets READONLY: redis-py
    closes it and raises ConnectionError, which every django-kiq loop treats as transient (back
    off, try again), and the next connection goes to the new master. Failing over is therefore
    the same as a dropped connection: nothing is retried blindly.
    """
    from redis.connection import parse_url
    from redis.sentinel import Sentinel

    target = {k: v for k, v in parse_url(url).items() if k in URL_PARTS_FOR_SENTINEL}
    target["connection_class"] = (_master_connection_classes()[1] if url.startswith("rediss://")
                                  else _master_connection_classes()[0])
    # Questions to sentinels are read-only and any sentinel may answer: fail fast on one that
    # is down so the next one is asked, instead of retrying it.
    sentinel_kwargs = {"socket_timeout": CONNECT_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
                       "retry": Retry(NoBackoff(), 0), **sentinel_options}
    sentinel = Sentinel([(str(host), int(port)) for host, port in sentinels],
                        sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(master, **{**target, **kwargs})


_CLASSES: tuple[type, type] | None = None


def _master_connection_classes() -> tuple[type, type]:
    """Connection classes (plain, SSL) for the Sentinel master pool, defined on first use."""
    global _CLASSES
    if _CLASSES is None:
        from redis.connection import SSLConnection
        from redis.exceptions import ConnectionError, ResponseError
        from redis.sentinel import SentinelManagedConnection

        class MasterConnection(SentinelManagedConnection):
            """Reconnects only to the address Sentinel gives now.

            redis-py 8 reopens a dropped connection inside ``send_packed_command`` through
            ``connect_check_health()``, which dials the connection's last address instead of
            asking Sentinel: after a failover a worker's fetcher kept reaching the demoted master
            (READONLY, dropped, redialled, READONLY...) for as long as it retried, while the
            other threads had moved on (tests/test_sentinel.py found it). ``connect()`` asks.
            NOREPLICAS (the master has too few replicas for ``min-replicas-to-write``, as an old
            master has once its replica was promoted) means the same as READONLY: this is no
            longer a master to write to; the command did not run.
            """

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                if not self._sock:
                    self.connect()
                return super().send_packed_command(command, check_health)

            def read_response(self, *args: Any, **kwargs: Any) -> Any:
                try:
                    return super().read_response(*args, **kwargs)
                except ResponseError as exc:
                    if not str(exc).startswith("NOREPLICAS"):
                        raise
                    self.disconnect()
                    raise ConnectionError(f"the master refused the write: {exc}") from exc

        class MasterSSLConnection(MasterConnection, SSLConnection):
            pass

        _CLASSES = (MasterConnection, MasterSSLConnection)
    return _CLASSES

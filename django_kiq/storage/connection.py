"""Building the redis-py client django-kiq talks through.

Either our own client from ``KIQ["REDIS_URL"]`` or the client of a django-redis cache
(``KIQ["REDIS_CACHE_ALIAS"]``) so a project keeps one connection pool. Our own client never
retries a command by itself: a blind retry of a command that ran but whose reply was lost could
move a job twice, so the callers that can retry safely do it themselves.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Blocking reads use at most 2 s, so a socket silent for this long means a dead peer.
SOCKET_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0


def build_client(url: str, cache_alias: str | None, options: dict | None = None) -> redis.Redis:
    if cache_alias:
        from django_redis import get_redis_connection

        return get_redis_connection(cache_alias)
    kwargs = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
        **(options or {}),
    }
    return redis.Redis.from_url(url, **kwargs)

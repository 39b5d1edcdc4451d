"""Unique jobs: what counts as "the same job", and how long its lock lives. Pure functions.

Used by the client when a ``@job(unique_for=...)`` is enqueued (the lock is taken by the Redis
writer in the same step as the push, ``unique_push.lua``) and by the worker and the API when a
job's lock must be released (its hash carries the digest as ``kiq_unique``). No Redis here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any


def digest(*, name: str, queue: str, args: tuple | list, kwargs: dict[str, Any],
           key: Callable[..., Any] | None = None) -> str:
    """The lock's name for this call: same job name, queue and arguments -> same digest.

    ``key`` (``unique_key=``) picks what counts as the same arguments; its result is turned
    into text. Arguments are compared by their JSON form, with dict keys sorted.
    """
    if key is not None:
        identity = str(key(*args, **kwargs))
    else:
        identity = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False)
    text = "\0".join((name, queue, identity))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def lock_ttl_ms(unique_for: float, *, delay: float = 0.0) -> int:
    """The lock's TTL: ``unique_for``, plus the wait of a scheduled job (never forever)."""
    return max(1, math.ceil((unique_for + max(0.0, delay)) * 1000))


def lock_of(job: dict[str, Any]) -> str:
    """The digest a job hash's lock goes by, or "" (read from Redis: anything else is none)."""
    value = job.get("kiq_unique")
    return value if isinstance(value, str) and 0 < len(value) <= 128 else ""

"""Jobs of the chaos suite; workers import them with ``KIQ_IMPORTS=chaos.jobs``.

Every run writes to the *ledger*: a Redis server of its own (``KIQ_CHAOS_LEDGER_URL``), never the
one under test, through a client that retries through dropped connections. A run adds a fresh
execution id to ``c:start:<token>`` when it starts and to ``c:done:<token>`` when it completes.
SADD is idempotent, so a write retried after a lost reply never counts twice: the size of
``c:done:<token>`` is exactly how many runs of that job completed, whatever django-kiq's own
counters say.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from django_kiq import job

_lock = threading.Lock()
_ledger: redis.Redis | None = None


def ledger() -> redis.Redis:
    """The ledger client of this process (created on first use; thread-safe)."""
    global _ledger
    with _lock:
        if _ledger is None:
            _ledger = redis.Redis.from_url(
                os.environ["KIQ_CHAOS_LEDGER_URL"], socket_timeout=10,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.01), 100),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        return _ledger


@job
def work(token: str, ms: int) -> None:
    """A job of ``ms`` milliseconds that records its start and its completion."""
    run = uuid.uuid4().hex
    ledger().sadd(f"c:start:{token}", run)
    time.sleep(ms / 1000)
    ledger().sadd(f"c:done:{token}", run)


@job
def noop() -> None:
    """For the memory scenario: no work, no ledger write."""


@job
def poison(token: str) -> None:
    """Records its start, then SIGKILLs the worker process running it."""
    ledger().sadd(f"c:start:{token}", uuid.uuid4().hex)
    os.kill(os.getpid(), signal.SIGKILL)

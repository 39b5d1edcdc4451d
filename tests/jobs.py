"""Jobs used by the test suite; workers started by tests import this module (KIQ_IMPORTS).

Jobs record what they did in Redis keys under ``test:`` (in the claimed test DB), so a test can
check runs from another process without trusting django-kiq's own counters.
"""

import os
import signal
import threading
import time

from django_kiq import job, storage


def _redis():
    return storage.get_default().client


@job
def record(token):
    """Count one run of ``token``."""
    _redis().hincrby("test:runs", token, 1)


@job(queue="other")
def record_other(token):
    _redis().hincrby("test:runs", token, 1)


@job
def record_order(token):
    """Append ``token`` to a list, to check execution order."""
    _redis().rpush("test:order", token)


@job
def record_kwargs(a, *, b=None, c=None):
    _redis().rpush("test:kwargs", f"{a}|{b}|{c}")


@job
def noop(i=0):
    pass


@job
def sleep_then_record(token, seconds):
    """Mark the start, sleep, then count a completed run."""
    _redis().hincrby("test:started", token, 1)
    time.sleep(seconds)
    _redis().hincrby("test:runs", token, 1)


@job(retry=2)
def fail(message="boom"):
    raise ValueError(message)


@job(retry=0, backtrace=5)
def fail_to_dead(message="boom"):
    raise RuntimeError(message)


@job(retry=False)
def fail_no_retry():
    raise RuntimeError("no retry")


@job
def kill_own_process(token):
    """A poison pill: SIGKILLs the worker running it."""
    _redis().hincrby("test:started", token, 1)
    os.kill(os.getpid(), signal.SIGKILL)


@job
def thread_name(token):
    _redis().hset("test:threads", token, threading.current_thread().name)


@job(name="HardWorker")
def hard_worker(name, count):
    """Registered under a Ruby class name: Ruby Sidekiq pushes, we run."""
    _redis().rpush("test:hardworker", f"{name}:{count}")


@job
async def async_record(token):
    _redis().hincrby("test:runs", token, 1)


@job
def add(a, b):
    return a + b


def wait_for_release(token, limit):
    """Mark ``token`` started, then wait until a test sets ``test:release`` (or ``limit``)."""
    client = _redis()
    client.hincrby("test:started", token, 1)
    deadline = time.monotonic() + limit
    while not client.exists("test:release") and time.monotonic() < deadline:
        time.sleep(0.02)


@job
def block_until_released(token, limit=30.0):
    """Mark the start, wait for ``test:release``, then count a completed run."""
    wait_for_release(token, limit)
    _redis().hincrby("test:runs", token, 1)


def _retrying_redis():
    """A client that retries through killed connections (for CLIENT KILL tests)."""
    global _RETRYING
    if _RETRYING is None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        kwargs = storage.get_default().client.connection_pool.connection_kwargs
        _RETRYING = redis.Redis(host=kwargs["host"], port=kwargs["port"], db=kwargs["db"],
                                retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), 20))
    return _RETRYING


_RETRYING = None


@job
def record_execution(token, sleep=0.0):
    """Add a unique execution id to ``test:execs:<token>``: SADD is safe to retry, so the set's
    size counts executions exactly even when the job's own connection is killed."""
    import uuid

    time.sleep(sleep)
    _retrying_redis().sadd(f"test:execs:{token}", uuid.uuid4().hex)


# In-process jobs for tests/test_testing.py and tests/test_middleware.py: they record into this
# list (not Redis), so those tests can check that the testing modes send no Redis command.
MEMORY: list = []


@job
def mem_record(value, *, note=None):
    """Remember the arguments exactly as received."""
    MEMORY.append((value, note))


@job
def mem_chain(depth):
    """Remember ``depth``, then enqueue itself with ``depth - 1`` until 0."""
    MEMORY.append(depth)
    if depth > 0:
        mem_chain.enqueue(depth - 1)


@job
def record_lateness(key, scheduled_at):
    """Append how late this run started against its scheduled time (bench/scheduled_precision.py)."""
    _redis().rpush(key, repr(time.time() - scheduled_at))


def _ledger():
    """A retrying client on ``KIQ_TEST_LEDGER_URL``: a Redis that is not the one under test."""
    global _LEDGER
    if _LEDGER is None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        _LEDGER = redis.Redis.from_url(os.environ["KIQ_TEST_LEDGER_URL"],
                                       retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), 20))
    return _LEDGER


_LEDGER = None


@job
def record_in_ledger(token, sleep=0.0):
    """Like ``record_execution``, into ``ledger:<token>`` on the ledger Redis (which stays up
    while the Redis the worker uses fails over: tests/test_sentinel.py)."""
    import uuid

    time.sleep(sleep)
    _ledger().sadd(f"ledger:{token}", uuid.uuid4().hex)

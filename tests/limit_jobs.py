"""Jobs used by tests/test_limits.py; workers import this module (KIQ_IMPORTS).

They record what happened in ``test:limits:*`` keys of the claimed test DB, with Redis's clock,
so the test checks runs in other processes without trusting django-kiq's own counters.
"""

import time

from django_kiq import job, limits, storage

# Overlap: INCR the running count and keep the maximum ever seen, atomically.
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""

WINDOW = limits.window("test-window", 5, "second")
LEAKY = limits.leaky("test-leaky", 4, 1.0, wait_timeout=10)


def _redis():
    return storage.get_default().client


@job(concurrency=3, retry=0)
def capped(token, seconds=0.05):
    """At most 3 at once everywhere; measures the overlap it sees."""
    r = _redis()
    r.eval(_ENTER, 2, "test:limits:running", "test:limits:max")
    try:
        time.sleep(seconds)
    finally:
        r.decr("test:limits:running")
    r.hincrby("test:limits:runs", token, 1)


@job(retry=0)
def windowed(token):
    """5 per clock second; rescheduled (not run in place) when the window is full."""
    with WINDOW.within_limit() as slot:
        _redis().rpush("test:limits:window", repr(slot.at))
    _redis().hincrby("test:limits:runs", token, 1)


@job(retry=0)
def leaky(token):
    """Bursts of 4, then 4 per second; waits in place for room (wait_timeout=10)."""
    with LEAKY.within_limit() as slot:
        _redis().rpush("test:limits:leaky", repr(slot.at))
    _redis().hincrby("test:limits:runs", token, 1)


@job(retry=0)
def hold(token, seconds=30.0):
    """Takes the one slot of test-kill and keeps it (the test SIGKILLs the worker)."""
    with limits.concurrent("test-kill", 1, lock_timeout=120, wait_timeout=0):
        _redis().set("test:limits:holding", token)
        time.sleep(seconds)

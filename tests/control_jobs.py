"""Jobs for tests/test_control.py (time limits, cancellation, expiry, unique and iterable jobs).

Worker subprocesses import this module through ``KIQ_IMPORTS`` next to ``tests.jobs``. Like
those jobs, they record what they did under ``test:`` keys of the claimed test DB.
"""

import threading
import time

from django_kiq import JobCancelled, current_job, job, storage


def _redis():
    return storage.get_default().client


@job(timeout=0.5, retry=1)
def spin(token):
    """A Python loop past its 0.5 s limit: JobTimeout interrupts it."""
    _redis().hset("test:thread", token, threading.current_thread().name)
    _redis().hset("test:started_at", token, repr(time.time()))
    while True:
        sum(range(100))


@job(timeout=0.3, retry=0)
def sleep_in_c(token, seconds):
    """Blocked in C past its limit: cannot be interrupted until the sleep returns."""
    _redis().hincrby("test:started", token, 1)
    time.sleep(seconds)
    _redis().hincrby("test:runs", token, 1)


@job
def where_am_i(token):
    _redis().hset("test:thread", token, threading.current_thread().name)
    ctx = current_job()
    _redis().hset("test:ctx", token, f"{ctx.jid}|{ctx.attempt}|{ctx.queue}|{ctx.deadline}")


@job(retry=3)
def wait_to_be_cancelled(token, limit=20.0):
    """Loops until cancelled; records the cleanup it does when JobCancelled arrives."""
    client = _redis()
    client.hincrby("test:started", token, 1)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except JobCancelled:
        client.hincrby("test:cleanup", token, 1)
        raise
    client.hincrby("test:runs", token, 1)


@job(expires_in=1)
def expiring(token):
    _redis().hincrby("test:runs", token, 1)


@job(unique_for=60, retry=2)
def unique_record(token, seconds=0.0, fail=False):
    client = _redis()
    client.hincrby("test:started", token, 1)
    time.sleep(seconds)
    if fail:
        raise RuntimeError("failing on purpose")
    client.hincrby("test:runs", token, 1)


@job(unique_for=60, unique_until="start")
def unique_until_start(token, seconds=0.0):
    _redis().hincrby("test:started", token, 1)
    time.sleep(seconds)


@job(unique_for=60, unique_conflict="raise")
def unique_raising(token):
    _redis().hincrby("test:runs", token, 1)


@job(unique_for=60, unique_key=lambda account, *rest, **kw: str(account))
def unique_per_account(account, order):
    _redis().hincrby("test:runs", f"{account}:{order}", 1)


@job(iterable=True, retry=1)
def ledger(token, count, pause=0.0, *, cursor=None):
    """Walks items 0..count-1 after ``cursor``, recording each in a ledger list."""
    client = _redis()
    start = 0 if cursor is None else cursor + 1
    for item in range(start, count):
        client.rpush(f"test:ledger:{token}", item)
        if pause:
            time.sleep(pause)
        yield item
    client.hincrby("test:runs", token, 1)

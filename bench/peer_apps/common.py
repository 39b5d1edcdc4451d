"""What every peer's jobs share: completion counting without a round trip per job.

Runs inside the peers' worker processes (their own virtualenv, see ``bench/peers.py``). Each job
calls :func:`mark_done`, which bumps an in-process counter; a daemon thread per process flushes it
with ``INCRBY pb:done`` every 5 ms, the way django-kiq's benchmark jobs count
(``bench/kiq_bench_jobs.py``) and Sidekiq's (``bench/sidekiq_jobs.rb``). A per-job ``INCR`` would
cost about as much as the no-op job being measured.

``PB_REDIS_PORT`` names the benchmark's Redis (db 0); ``PB_LOG_LEVEL`` the peers' log level
(``WARNING`` or ``INFO``), read by each app.
"""
import logging
import os
import threading
import time

REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("PB_REDIS_PORT", "6390"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
DONE_KEY = "pb:done"
LOG_LEVEL = os.environ.get("PB_LOG_LEVEL", "WARNING").upper()

_state = {"pid": None, "pending": 0, "lock": threading.Lock(), "init": threading.Lock()}


def _reset_after_fork():
    _state.update(pid=None, pending=0, lock=threading.Lock(), init=threading.Lock())


os.register_at_fork(after_in_child=_reset_after_fork)


def _flusher():
    import redis
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    while True:
        time.sleep(0.005)
        with _state["lock"]:
            n, _state["pending"] = _state["pending"], 0
        if n:
            client.incrby(DONE_KEY, n)


def mark_done():
    pid = os.getpid()
    if _state["pid"] != pid:
        with _state["init"]:
            if _state["pid"] != pid:
                threading.Thread(target=_flusher, name="pb-flusher", daemon=True).start()
                _state["pid"] = pid
    with _state["lock"]:
        _state["pending"] += 1


def body_noop(i):
    mark_done()


def body_sleep10(i):
    time.sleep(0.01)
    mark_done()


def job_logger_level():
    return getattr(logging, LOG_LEVEL, logging.WARNING)

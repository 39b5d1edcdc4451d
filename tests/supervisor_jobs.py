"""Jobs for tests/test_supervisor.py (``kiq_worker --processes``); workers import this module
through ``KIQ_IMPORTS`` next to ``tests.jobs``. They record under ``test:`` keys of the claimed DB.
"""

import os
import time

from django_kiq import job, storage

from .jobs import wait_for_release


def _redis():
    return storage.get_default().client


@job
def pid_of(token):
    """Record which process ran ``token``."""
    _redis().hset("test:pids", token, os.getpid())


@job
def hold(token, limit=30.0):
    """Record this process, wait for ``test:release``, then count a completed run."""
    _redis().hset("test:pids", token, os.getpid())
    wait_for_release(token, limit)
    _redis().hincrby("test:runs", token, 1)


@job(timeout=0.3, retry=3)
def stuck_in_c(token, seconds):
    """Blocked in C (a sleep) far past its 0.3 s limit: JobTimeout cannot interrupt it."""
    _redis().hset("test:pids", token, os.getpid())
    _redis().hincrby("test:started", token, 1)
    time.sleep(seconds)
    _redis().hincrby("test:runs", token, 1)

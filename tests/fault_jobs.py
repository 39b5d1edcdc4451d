"""Jobs and a task that misbehave, for tests/test_worker_faults.py (issue 10 items 1 and 2).

Worker subprocesses import this module through ``KIQ_IMPORTS`` next to ``tests.jobs``. Like
those jobs, they record what they did under ``test:`` keys of the claimed test DB.
"""

import sys
import time

from django.tasks import task

from django_kiq import job, storage


def _redis():
    return storage.get_default().client


class Halt(BaseException):
    """Neither an Exception nor an exit: the widest thing a job can raise."""


@job(retry=3)
def exit_job(token):
    """``sys.exit()`` from a job: its failure, never the worker's shutdown."""
    _redis().hincrby("test:started", token, 1)
    sys.exit(3)


@job(retry=3)
def interrupt_job(token):
    _redis().hincrby("test:started", token, 1)
    raise KeyboardInterrupt(token)


@job(retry=3)
def halt_job(token):
    _redis().hincrby("test:started", token, 1)
    raise Halt(token)


@job(retry=3)
def fail_with(message):
    """Raise ValueError(message): a message may hold anything, a lone surrogate included."""
    raise ValueError(message)


@job
def hang(token, limit=30.0):
    """Wedge: mark the start, then sleep up to ``limit`` (a job nothing can interrupt)."""
    _redis().hincrby("test:started", token, 1)
    time.sleep(limit)
    _redis().hincrby("test:runs", token, 1)


@task
def exit_task():
    sys.exit("task exit")

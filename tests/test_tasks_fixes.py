"""Regression tests for issue 10's django.tasks and new-user items (12, 13, 14, 17).

Against the real Redis; item 13 with real worker subprocesses, since the bug needed a process
stopped while a task ran. Item 15 (``kiq_worker`` without Redis) is in test_worker_command.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus, task_backends
from django.test import override_settings

from tests import djtasks
from tests.conftest import ROOT, wait_for
from tests.test_tasks import WORKER_ENV, tasks_setting


@pytest.fixture
def backend(redis_client):
    with override_settings(TASKS=tasks_setting()):
        yield task_backends["default"]


# -- 12: every option the record stores reads back ---------------------------------------------

def test_get_result_returns_the_task_as_enqueued_with_every_option(backend):
    run_after = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    full = djtasks.with_context.using(priority=7, queue_name="mail", run_after=run_after,
                                      backend="default", retry=3)
    result = full.enqueue("token")
    read = backend.get_result(result.id)
    assert read.task.retry == 3 and read.task.takes_context
    assert read.task == result.task
    assert read == result

    # A task that leaves retry to OPTIONS reads back with retry None, not the resolved count.
    plain = djtasks.add.enqueue(1, 2)
    assert backend.get_result(plain.id) == plain and backend.get_result(plain.id).task.retry \
        is None
    # A declared retry, and a timedelta resolved at enqueue.
    later = djtasks.flaky.using(run_after=dt.timedelta(hours=1)).enqueue("t", 1)
    assert backend.get_result(later.id) == later and later.task.retry == 2
    # Retry 0 is an option too (not "unset").
    zero = djtasks.flaky.using(retry=0).enqueue("z", 1)
    assert backend.get_result(zero.id).task.retry == 0

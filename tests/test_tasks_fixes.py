"""Regression tests for issue 10's django.tasks items (12, 13) and the demo's cron job (17).

Against the real Redis; item 13 with real worker subprocesses, since the bug needed a process
stopped while a task ran. Item 14 (screenshots) is tested in test_admin_browser.py, item 15
(``kiq_worker`` without Redis) in test_worker_command.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import sys

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


# -- 13: a task pushed back by a stopping worker reads READY while it waits ------------------------

def _job_ids(redis_client, queue="default"):
    return [json.loads(raw)["jid"] for raw in redis_client.lrange(f"queue:{queue}", 0, -1)]


@pytest.mark.parametrize("stop", ["second-interrupt", "term-timeout"])
def test_a_task_pushed_back_on_stop_reads_ready_then_runs(backend, redis_client,
                                                         worker_factory, stop):
    result = djtasks.block_until_released.enqueue("cut", 30)
    args = ["-c", "1"] + (["--timeout", "0.3"] if stop == "term-timeout" else [])
    first = worker_factory(*args, env=WORKER_ENV)
    wait_for(lambda: redis_client.hget("test:started", "cut"), timeout=20,
             message=lambda: f"task never started:\n{first.output()}")
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING
    if stop == "second-interrupt":
        first.send(signal.SIGINT)
        wait_for(lambda: "stopping" in first.output(), message=first.output)
        first.send(signal.SIGINT)  # the second Ctrl-C: stop now, push the task back
    else:
        first.send(signal.SIGTERM)
    assert first.wait(timeout=20) == 0, first.output()
    assert result.id in _job_ids(redis_client), first.output()

    result.refresh()
    assert result.status == TaskResultStatus.READY, first.output()
    assert result.attempts == 1 and result.errors == []

    redis_client.set("test:release", 1)
    second = worker_factory("-c", "1", env=WORKER_ENV)
    wait_for(lambda: result.refresh() or result.status == TaskResultStatus.SUCCESSFUL,
             timeout=20, message=second.output)
    assert result.return_value == "cut" and result.attempts == 2
    assert f":{second.pid}:" in result.worker_ids[1]


def test_a_recovered_orphan_reads_ready_in_the_step_that_requeues_it(backend, store,
                                                                    redis_client):
    """Orphan recovery puts a started task back with its result "queued" (READY) in the same
    settle step as the push, so no worker can have started it in between; the same holds for
    a @job keeping its result, and a job sent to the retry set to run apart reads "retrying"."""
    from django_kiq import results
    from django_kiq.worker.fetcher import plan_recovery
    from tests import workflow_jobs

    task = djtasks.add.enqueue(1, 2)
    jid = workflow_jobs.add.enqueue(2, 3)
    raws = [redis_client.rpop("queue:default") for _ in range(2)]
    dead = "gone-host:1:deadbeef"
    for raw in raws:
        redis_client.lpush(store.keys.wip(dead), raw)
    for one in (task.id, jid):
        store.start_job_result(one, {"status": "running", "last_attempted_at": "1.0"}, ttl=60)
    assert backend.get_result(task.id).status == TaskResultStatus.RUNNING

    entries = plan_recovery(raws, identity=dead, poison_limit=3, now=time.time())
    assert store.settle(dead, entries) == [1, 1]
    assert backend.get_result(task.id).status == TaskResultStatus.READY
    assert results.get(jid).status == "queued" and results.get(task.id).status == "queued"
    assert results.get(jid).started_at == 1.0  # the first attempt's start is kept

    # The last chance before the poison limit, with company: to the retry set, "retrying".
    raws = [redis_client.rpop("queue:default") for _ in range(2)]
    for raw in raws:
        redis_client.lpush(store.keys.wip(dead), raw)
    entries = plan_recovery(raws, identity=dead, poison_limit=3, now=time.time())  # 2nd death
    assert [e.dest for e in entries] == ["retry", "retry"]
    assert store.settle(dead, entries) == [1, 1]
    assert results.get(jid).status == "retrying"
    assert backend.get_result(task.id).status == TaskResultStatus.READY


# -- 17: the demo project has a periodic job ----------------------------------------------------

LIST_ENTRIES = ("from django_kiq import periodic; import json; "
                "print(json.dumps([[r.entry.name, r.entry.cron, r.entry.job, r.entry.queue, "
                "r.next_run is not None] for r in periodic.records()]))")


def _entries_in_a_fresh_process(redis_url, **env):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("KIQ_IMPORTS", "KIQ_PERIODIC")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "--no-imports", "-c", LIST_ENTRIES],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, "DJANGO_SETTINGS_MODULE": "testproject.settings",
             "KIQ_REDIS_URL": redis_url, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_demo_settings_declare_a_periodic_job(redis_client, redis_url):
    # What the demo's Periodic page lists (periodic.records() is the page's data).
    assert _entries_in_a_fresh_process(redis_url) == [
        ["demo-minute-report", "* * * * *", "testproject.demo.jobs.minute_report", "default",
         True]]
    # Harnesses (tests, benchmarks, chaos) name their job modules and get no demo entry.
    assert _entries_in_a_fresh_process(redis_url, KIQ_IMPORTS="tests.jobs") == []


def test_demo_periodic_job_runs(redis_client, caplog):
    from testproject.demo import jobs as demo_jobs

    with caplog.at_level("INFO", logger="django_kiq.demo"):
        demo_jobs.minute_report()
    assert "demo report: processed=0" in caplog.text

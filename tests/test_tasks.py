"""The django.tasks backend (``django_kiq.tasks.KiqBackend``) against the real Redis.

Tasks live in ``tests/djtasks.py``. Worker subprocesses run them for the end-to-end checks
(results read back from another process); retries and signals run the shim job in this process
through ``conftest.run_as_worker`` (a processor thread's steps, then the job's settle step), so no
test waits for a retry backoff.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys

import pytest
from django.core import checks
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.test import override_settings
from django.utils import timezone

from django_kiq import PayloadTooLarge, storage
from django_kiq.storage import results as result_ops
from django_kiq.tasks import SHIM_NAME, KiqBackend, KiqTask
from tests import djtasks, jobs
from tests.conftest import run_as_worker, wait_for

WORKER_ENV = {"KIQ_IMPORTS": "tests.jobs,tests.djtasks"}
# The processor closes stale DB connections around each job, as in a worker.
executes = pytest.mark.django_db(transaction=True)


def tasks_setting(**options):
    return {"default": {"BACKEND": "django_kiq.tasks.KiqBackend", "QUEUES": ["default", "mail"],
                        "OPTIONS": options}}


@pytest.fixture
def backend(redis_client):
    with override_settings(TASKS=tasks_setting()):
        yield task_backends["default"]


@pytest.fixture
def signals():
    received = []

    def receiver(signal_name):
        def on_signal(sender, task_result, **kwargs):
            received.append((signal_name, sender, task_result.id, task_result.status))
        return on_signal

    handlers = {sig: receiver(name) for sig, name in
                ((task_enqueued, "enqueued"), (task_started, "started"),
                 (task_finished, "finished"))}
    for sig, handler in handlers.items():
        sig.connect(handler, weak=False)
    yield received
    for sig, handler in handlers.items():
        sig.disconnect(handler)


def queued(redis_client, queue="default"):
    """Job hashes of a queue, next to run first."""
    return [json.loads(raw) for raw in reversed(redis_client.lrange(f"queue:{queue}", 0, -1))]


def run_next(redis_client, queue="default", raw=None):
    """Take the head job of ``queue`` (or run ``raw``) as a worker would."""
    raw = raw if raw is not None else redis_client.rpop(f"queue:{queue}")
    assert raw is not None, f"queue {queue} is empty"
    return run_as_worker(raw, queue)


# -- configuration ----------------------------------------------------------------------------

def test_capabilities_and_construction_does_no_io():
    with override_settings(KIQ={"REDIS_URL": "redis://127.0.0.1:1/0"}, TASKS=tasks_setting()):
        backend = task_backends["default"]
        assert isinstance(backend, KiqBackend)
        assert backend.supports_defer and backend.supports_async_task
        assert backend.supports_get_result and backend.supports_priority
        KiqTask(func=djtasks._plain, priority=3)  # validated by the backend: still no I/O
        assert storage._default is None


def test_check_reports_misconfiguration():
    good = KiqBackend(alias="default", params=tasks_setting()["default"])
    assert good.check() == []
    bad = KiqBackend(alias="x", params={
        "QUEUES": ["ok", "bad name"],
        "OPTIONS": {"result_ttl": 0, "retry": -1, "enqueue_on_commit": "yes", "bogus": 1}})
    assert sorted(e.id for e in bad.check()) == [f"django_kiq.T00{n}" for n in (2, 3, 4, 5, 6)]
    assert KiqBackend(alias="y", params={"OPTIONS": {"retry": True}}).check()[0].id == \
        "django_kiq.T004"
    with override_settings(TASKS={"default": {"BACKEND": "django_kiq.tasks.KiqBackend",
                                              "OPTIONS": {"result_ttl": "1d"}}}):
        assert "django_kiq.T003" in [e.id for e in checks.run_checks()]


def test_validation_fails_where_the_mistake_is_made(backend):
    with pytest.raises(InvalidTask, match="priority"):
        djtasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match="retry"):
        djtasks.add.using(retry=-1)
    with pytest.raises(InvalidTask, match="Queue"):
        djtasks.add.using(queue_name="nope")
    with pytest.raises(TypeError):
        djtasks.add.enqueue(object(), 1)
    with pytest.raises(TypeError, match="non-string key"):
        djtasks.add.enqueue({1: "x"}, 1)
    assert djtasks.flaky.retry == 2 and djtasks.add.using(retry=4).retry == 4


# -- enqueue, storage, priority ---------------------------------------------------------------

def test_enqueue_returns_ready_result_and_pushes_a_job(backend, redis_client, signals):
    result = djtasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY and result.enqueued_at is not None
    assert result.args == [2] and result.kwargs == {"b": 3} and result.backend == "default"
    assert len(result.id) == 24
    [job] = queued(redis_client)
    assert job["class"] == SHIM_NAME and job["jid"] == result.id
    assert job["display_class"] == job["wrapped"] == "tests.djtasks.add"
    assert job["args"][:3] == ["tests.djtasks.add", [2], {"b": 3}] and job["retry"] == 0
    assert signals == [("enqueued", KiqBackend, result.id, TaskResultStatus.READY)]
    stored = djtasks.add.get_result(result.id)
    assert stored.status == TaskResultStatus.READY and stored.args == [2]
    assert stored.enqueued_at == result.enqueued_at
    assert 86_000 < redis_client.ttl(f"kiq:result:{result.id}") <= 86_400


def test_payload_size_limit_applies(backend, redis_client, redis_url):
    with override_settings(KIQ={"REDIS_URL": redis_url, "MAX_PAYLOAD_BYTES": 2000}):
        with pytest.raises(PayloadTooLarge):
            djtasks.add.enqueue("x" * 5000, 1)
    assert redis_client.llen("queue:default") == 0 and redis_client.dbsize() == 1  # the claim


def test_get_result_errors(backend):
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("0" * 24)
    result = djtasks.add.enqueue(1, 1)
    with pytest.raises(TaskResultMismatch):
        djtasks.fail.get_result(result.id)


def test_async_enqueue_and_get_result(backend):
    result = asyncio.run(djtasks.add.aenqueue(1, 2))
    fetched = asyncio.run(djtasks.add.aget_result(result.id))
    assert fetched.id == result.id and fetched.status == TaskResultStatus.READY


def test_higher_priority_enqueued_later_is_placed_ahead(backend, redis_client):
    order = [("a", 0), ("b", 0), ("c", -10), ("d", 10), ("e", 10), ("f", 50), ("g", -10),
             ("h", -50), ("i", 0)]
    for token, priority in order:
        djtasks.record_order.using(priority=priority).enqueue(token)
        if token == "b":
            jobs.noop.enqueue()  # a plain @job counts as priority 0
    tokens = [j["args"][1][0] if j["class"] == SHIM_NAME else "job" for j in queued(redis_client)]
    assert tokens == ["f", "d", "e", "a", "b", "job", "i", "c", "g", "h"]


def test_placement_scan_is_bounded(backend, redis_client, monkeypatch):
    for token in "abc":
        djtasks.record_order.using(priority=10).enqueue(token)
    monkeypatch.setattr(result_ops, "PRIORITY_SCAN_LIMIT", 2)
    djtasks.record_order.using(priority=10).enqueue("d")
    assert [j["args"][1][0] for j in queued(redis_client)] == ["a", "b", "d", "c"]


def test_run_after_datetime_and_timedelta_schedule_the_job(backend, redis_client):
    when = timezone.now() + dt.timedelta(hours=1)
    at_result = djtasks.add.using(run_after=when).enqueue(1, 2)
    later = djtasks.add.using(run_after=dt.timedelta(minutes=5))  # core rejects this under USE_TZ
    before = timezone.now()
    delta_result = later.enqueue(3, 4)
    assert isinstance(delta_result.task.run_after, dt.datetime)
    assert before + dt.timedelta(minutes=5) <= delta_result.task.run_after
    assert redis_client.llen("queue:default") == 0
    scores = {json.loads(raw)["jid"]: score
              for raw, score in redis_client.zrange("schedule", 0, -1, withscores=True)}
    assert scores[at_result.id] == pytest.approx(when.timestamp())
    assert scores[delta_result.id] == pytest.approx(delta_result.task.run_after.timestamp())
    stored = djtasks.add.get_result(at_result.id)
    assert stored.status == TaskResultStatus.READY and stored.task.run_after == when
    assert redis_client.ttl(f"kiq:result:{at_result.id}") > 86_400 + 3500  # outlives the wait


# -- on commit --------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_rollback_pushes_nothing_and_commit_pushes(backend, redis_client, signals):
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled_back = djtasks.add.enqueue(1, 1)
        raise RuntimeError("roll back")
    assert redis_client.llen("queue:default") == 0 and signals == []
    assert not redis_client.exists(f"kiq:result:{rolled_back.id}")
    with transaction.atomic():
        committed = djtasks.add.enqueue(2, 2)
        assert redis_client.llen("queue:default") == 0
    assert [j["jid"] for j in queued(redis_client)] == [committed.id]
    assert signals == [("enqueued", KiqBackend, committed.id, TaskResultStatus.READY)]


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_can_be_turned_off(redis_client):
    with override_settings(TASKS=tasks_setting(enqueue_on_commit=False)):
        with transaction.atomic():
            result = djtasks.add.enqueue(1, 1)
            assert [j["jid"] for j in queued(redis_client)] == [result.id]


# -- execution in this process: signals, retries, unknown tasks ------------------------------

@executes
def test_execution_sends_started_and_finished(backend, redis_client, signals):
    result = djtasks.add.enqueue(2, 3)
    assert run_next(redis_client).kind == "done"
    assert signals == [("enqueued", KiqBackend, result.id, TaskResultStatus.READY),
                       ("started", KiqBackend, result.id, TaskResultStatus.RUNNING),
                       ("finished", KiqBackend, result.id, TaskResultStatus.SUCCESSFUL)]
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    [worker_id] = result.worker_ids
    assert f":{os.getpid()}:" in worker_id  # host:pid:thread of the process that ran it
    assert result.started_at <= result.finished_at and result.errors == []


@executes
def test_retries_append_attempts_and_errors(backend, redis_client, signals):
    result = djtasks.flaky.enqueue("tok", succeed_on=3)
    assert queued(redis_client)[0]["retry"] == 2
    outcome = run_next(redis_client)
    assert outcome.kind == "retry"
    result.refresh()
    assert result.status == TaskResultStatus.READY and result.attempts == 1
    assert [e.exception_class_path for e in result.errors] == ["builtins.RuntimeError"]
    assert redis_client.ttl(f"kiq:result:{result.id}") > 86_400  # outlives the retry backoff
    outcome = run_next(redis_client, raw=outcome.new)
    assert outcome.kind == "retry"
    assert run_next(redis_client, raw=outcome.new).kind == "done"
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert result.attempts == 3 and len(result.errors) == 2
    assert "attempt 2 of tok" in result.errors[1].traceback
    assert [s[0] for s in signals] == ["enqueued", "started", "started", "started", "finished"]


@executes
def test_a_run_cut_short_does_not_use_a_retry(backend, redis_client):
    result = djtasks.fail.using(retry=1).enqueue("x")
    raw = redis_client.rpop("queue:default")
    meta = json.loads(raw)["args"][3]
    # A worker started the task and died: orphan recovery hands the same job to another one.
    storage.get_default().start_task_attempt(result.id, {}, worker_id="gone:1:t", now=1.0,
                                             ttl=60)
    assert run_next(redis_client, raw=raw).kind == "retry"
    result.refresh()
    assert result.status == TaskResultStatus.READY and result.attempts == 2
    assert result.worker_ids[0] == "gone:1:t" and len(result.errors) == 1
    assert meta["retry"] == 1


@executes
def test_retry_option_and_exhaustion(redis_client, signals):
    with override_settings(TASKS=tasks_setting(retry=1)):
        result = djtasks.fail.enqueue("nope")
        first = run_next(redis_client)
        assert first.kind == "retry"
        assert run_next(redis_client, raw=first.new).kind == "dead"
        result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.attempts == 2
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"] * 2
    assert result.finished_at is not None
    with pytest.raises(ValueError, match="failed"):
        result.return_value
    assert [s[0] for s in signals].count("finished") == 1
    assert signals[-1][3] == TaskResultStatus.FAILED


@executes
def test_unknown_task_is_handled_like_an_unknown_job_and_never_imported(backend, redis_client):
    assert "this" not in sys.modules  # importing it would print the Zen of Python
    result = djtasks.add.enqueue(1, 1)
    raw = redis_client.rpop("queue:default")
    job = json.loads(raw)
    job["args"][0] = "this.zen"
    outcome = run_next(redis_client, raw=json.dumps(job).encode())
    assert outcome.kind == "dead"  # retry 0: straight to the dead set, like an unknown job
    assert json.loads(outcome.new)["error_class"] == "django_kiq.tasks.UnknownTask"
    assert "this" not in sys.modules
    record = storage.get_default().job_result(result.id)
    assert record["status"] == "failed" and record["attempts"] == "1"
    assert "UnknownTask" in json.loads(record["error:1"])["exception_class_path"]
    with pytest.raises(TaskResultDoesNotExist, match="not defined"):
        backend.get_result(result.id)  # results never import a path read from Redis either


@executes
def test_task_bound_under_another_name_is_found(backend, redis_client):
    result = djtasks.renamed.enqueue(7)
    assert run_next(redis_client).kind == "done"
    assert djtasks.renamed.get_result(result.id).return_value == 7


# -- a real worker: results from another process ---------------------------------------------

def _finished(result):
    result.refresh()
    return result.is_finished


def test_worker_runs_tasks_and_results_are_read_back(backend, redis_client, worker_factory):
    blocked = djtasks.block_until_released.enqueue("blk")
    added = djtasks.add.enqueue(2, 3)
    async_result = djtasks.async_add.enqueue(4, 5)
    context = djtasks.with_context.enqueue("ctx")
    failed = djtasks.fail.enqueue("bad input")
    mail = djtasks.send_mail.enqueue("ann@example.com")
    deferred = djtasks.add.using(run_after=dt.timedelta(seconds=1)).enqueue(10, 20)
    worker = worker_factory("-q", "default", "-q", "mail", env=WORKER_ENV)

    wait_for(lambda: redis_client.hget("test:started", "blk"), timeout=20,
             message=lambda: f"blocking task never started:\n{worker.output()}")
    blocked.refresh()
    assert blocked.status == TaskResultStatus.RUNNING and blocked.started_at is not None
    assert blocked.attempts == 1 and f":{worker.pid}:" in blocked.worker_ids[0]
    redis_client.set("test:release", 1)
    for result in (blocked, added, async_result, context, failed, mail, deferred):
        wait_for(lambda r=result: _finished(r), timeout=20,
                 message=lambda: f"{result.task.name} did not finish:\n{worker.output()}")

    assert blocked.return_value == "blk"
    assert djtasks.add.get_result(added.id).return_value == 5
    assert async_result.return_value == 9
    assert context.return_value == {"attempt": 1, "id": context.id, "token": "ctx"}
    assert mail.return_value == "sent to ann@example.com" and mail.task.priority == 5
    assert failed.status == TaskResultStatus.FAILED and failed.attempts == 1
    [error] = failed.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError and "bad input" in error.traceback
    assert any(json.loads(raw)["jid"] == failed.id for raw in redis_client.zrange("dead", 0, -1))
    assert deferred.return_value == 30
    assert deferred.started_at >= deferred.task.run_after


def test_worker_runs_higher_priority_first(backend, redis_client, worker_factory):
    for token, priority in [("low1", 0), ("low2", 0), ("neg", -5), ("high", 20), ("top", 90)]:
        djtasks.record_order.using(priority=priority).enqueue(token)
    worker = worker_factory("-c", "1", env=WORKER_ENV)
    wait_for(lambda: redis_client.llen("test:task-order") == 5, timeout=20,
             message=lambda: f"tasks did not run:\n{worker.output()}")
    assert [t.decode() for t in redis_client.lrange("test:task-order", 0, -1)] == [
        "top", "high", "low1", "low2", "neg"]

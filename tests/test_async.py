"""Async enqueueing (``aclient``, ``storage.aio``) and async jobs on the worker's event loop
(``worker/aio.py``), against the real Redis and real worker subprocesses.

Enqueue tests run coroutines with ``asyncio.run`` (each run a new loop, so each gets its own
``AsyncStorage``). Worker tests import ``tests.async_jobs``, whose jobs record their runs in
Redis with the asyncio client.
"""

import asyncio
import datetime as dt
import json
import signal
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.test import override_settings

from django_kiq import DuplicateJob, PayloadTooLarge
from tests import async_jobs as aj
from tests import control_jobs as cj
from tests import jobs
from tests.conftest import wait_for
from tests.test_control import cancel_while_running

IMPORTS = {"KIQ_IMPORTS": "tests.jobs,tests.async_jobs"}
HERE = __name__


def _kiq(**changes):
    return override_settings(KIQ={**settings.KIQ, **changes})


def _queue(redis_client, name="default"):
    return [json.loads(raw) for raw in redis_client.lrange(f"queue:{name}", 0, -1)]


def _hget_int(redis_client, key, field):
    value = redis_client.hget(key, field)
    return int(value) if value is not None else 0


def _stat(redis_client, name):
    return int(redis_client.get(f"stat:{name}") or 0)


def tag(next_push):
    def push(job):
        if job["args"] == ["drop"]:
            return None
        return next_push({**job, "tenant": "acme"})
    return push


# -- async enqueue ----------------------------------------------------------------------------

def test_aenqueue_writes_the_same_job_hash_as_enqueue(redis_client):
    sync_jid = jobs.record_kwargs.enqueue(1, b="x")
    async_jid = asyncio.run(jobs.record_kwargs.aenqueue(1, b="x"))
    # LPUSH: the newest is at the head.
    newest, oldest = _queue(redis_client)
    assert (oldest["jid"], newest["jid"]) == (sync_jid, async_jid)
    for field in ("jid", "created_at", "enqueued_at"):
        oldest.pop(field), newest.pop(field)
    assert newest == oldest
    assert redis_client.sismember("queues", "default")


def test_aenqueue_in_at_and_many(redis_client):
    async def main():
        later = await jobs.record.aenqueue_in(60, "later")
        at = await jobs.record.aenqueue_at(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
                                           "at")
        now = await jobs.record.aenqueue_at(time.time() - 5, "past")
        many = await jobs.record.set(queue="other").aenqueue_many([(i,) for i in range(2500)])
        return later, at, now, many

    later, at, now, many = asyncio.run(main())
    scheduled = {json.loads(m)["jid"]: s for m, s in
                 redis_client.zrange("schedule", 0, -1, withscores=True)}
    assert set(scheduled) == {later, at}
    assert scheduled[later] == pytest.approx(time.time() + 60, abs=5)
    assert [j["jid"] for j in _queue(redis_client)] == [now]
    assert len(many) == 2500 and redis_client.llen("queue:other") == 2500
    assert [j["args"] for j in _queue(redis_client, "other")[-2:]] == [[1], [0]]


def test_aenqueue_validates_like_enqueue(redis_client):
    with pytest.raises(TypeError):
        asyncio.run(jobs.record.aenqueue(object()))
    with pytest.raises(TypeError):
        asyncio.run(jobs.record.aenqueue_in("soon", "x"))
    with pytest.raises(ValueError):
        asyncio.run(jobs.record.aenqueue_at(dt.datetime(2030, 1, 1), "naive"))
    with _kiq(MAX_PAYLOAD_BYTES=200), pytest.raises(PayloadTooLarge):
        asyncio.run(jobs.record.aenqueue("x" * 500))
    assert redis_client.llen("queue:default") == 0


def test_aenqueue_runs_client_middleware(redis_client):
    with _kiq(CLIENT_MIDDLEWARE=[f"{HERE}.tag"]):
        kept = asyncio.run(jobs.record.aenqueue("keep"))
        dropped = asyncio.run(jobs.record.aenqueue("drop"))
        many = asyncio.run(jobs.record.aenqueue_many([("a",), ("drop",)]))
    assert dropped is None and many[1] is None and kept and many[0]
    assert [(j["args"], j["tenant"]) for j in _queue(redis_client)] == [
        (["a"], "acme"), (["keep"], "acme")]


def test_aenqueue_unique_jobs(redis_client):
    async def main():
        first = await cj.unique_record.aenqueue("u")
        second = await cj.unique_record.aenqueue("u")
        batch = await cj.unique_record.aenqueue_many([("v",), ("v",), ("w",)])
        await cj.unique_raising.aenqueue("r")
        with pytest.raises(DuplicateJob) as raised:
            await cj.unique_raising.aenqueue("r")
        return first, second, batch, raised.value.jid

    first, second, batch, holder = asyncio.run(main())
    assert first and second is None
    assert batch[0] and batch[1] is None and batch[2]
    assert holder == next(j["jid"] for j in _queue(redis_client) if j["args"] == ["r"])
    assert len(list(redis_client.scan_iter("*unique*"))) == 4  # one lock per job pushed
    assert len(_queue(redis_client)) == 4  # u, v, w, r


# -- on-commit rules in async code ------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_aenqueue_on_a_loop_writes_at_once_even_with_enqueue_on_commit(redis_client):
    # A coroutine cannot be inside atomic(): Django refuses it on the loop's thread.
    assert settings.KIQ.get("ENQUEUE_ON_COMMIT", True)
    asyncio.run(jobs.record.aenqueue("now"))
    assert redis_client.llen("queue:default") == 1


@pytest.mark.django_db(transaction=True)
def test_enqueue_in_atomic_through_sync_to_async_waits_for_the_commit(redis_client):
    def create(token, fail):
        before = redis_client.llen("queue:default")
        with transaction.atomic():
            jobs.record.enqueue(token)
            assert redis_client.llen("queue:default") == before  # not before the commit
            if fail:
                raise RuntimeError("rolled back")

    async def main():
        await sync_to_async(create)("commit", False)
        with pytest.raises(RuntimeError):
            await sync_to_async(create)("rollback", True)

    asyncio.run(main())
    assert [j["args"] for j in _queue(redis_client)] == [["commit"]]


@pytest.mark.django_db(transaction=True)
def test_aenqueue_on_a_loop_run_inside_a_sync_atomic_block_does_not_wait(redis_client):
    # The loop's code sees a connection of its own (Django keeps one per async context), which
    # is in no transaction: the job is written when awaited, and a rollback does not undo it.
    with pytest.raises(RuntimeError), transaction.atomic():
        asyncio.run(jobs.record.aenqueue("written"))
        assert redis_client.llen("queue:default") == 1
        raise RuntimeError
    assert redis_client.llen("queue:default") == 1


def test_aenqueue_in_test_modes_uses_the_mode_writer(redis_client):
    from django_kiq import testing

    with _kiq(TESTING="fake"), testing.fake():
        jid = asyncio.run(jobs.record.aenqueue("fake"))
        assert [j["jid"] for j in testing.jobs] == [jid]
    assert redis_client.llen("queue:default") == 0


# -- async jobs on the worker's event loop ----------------------------------------------------

def _start(worker_factory, *args, **env):
    return worker_factory(*args, env={**IMPORTS, **env})


def _spans(redis_client):
    return [tuple(map(float, s.split())) for s in redis_client.lrange("test:async:spans", 0, -1)]


def test_a_thousand_concurrent_sleeps(redis_client, worker_factory):
    aj.nap.enqueue_many([(f"n{i}", 0.1) for i in range(1000)])
    worker = _start(worker_factory, "-c", "5", "--async-concurrency", "500")
    wait_for(lambda: redis_client.llen("test:async:spans") == 1000, timeout=30,
             message=worker.output)
    spans = _spans(redis_client)
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    # docs/jobs.md has the figure measured by bench/async_sleep.py (under 1 s); loose here.
    assert wall < 3.0, wall
    assert redis_client.smembers("test:async:threads") == {b"kiq-async-loop"}
    assert "5 threads + 500 async" in worker.output()
    worker.send(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert _stat(redis_client, "processed") == 1000 and _stat(redis_client, "failed") == 0


def test_async_concurrency_caps_jobs_at_once(redis_client, worker_factory):
    aj.nap.enqueue_many([(f"c{i}", 0.3) for i in range(20)])
    worker = _start(worker_factory, "-c", "2", "--async-concurrency", "5")
    wait_for(lambda: redis_client.llen("test:async:spans") == 20, timeout=30,
             message=worker.output)
    spans = sorted(_spans(redis_client))
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 5
    wall = max(e for _, e in spans) - spans[0][0]
    assert wall >= 4 * 0.3 - 0.05  # 20 jobs, 5 at a time: 4 rounds


def test_an_async_job_reports_progress_and_adds_to_its_batch(redis_client, worker_factory):
    """Workflows are wired before an async job runs on the worker's loop, as for a threaded
    one: its result reads "running" with its progress, and current_job().batch is its batch."""
    from django_kiq import api, batch, results

    jid = aj.crunch.enqueue(3, 0.4)
    with batch(description="async spawn") as b:
        aj.spawn.enqueue("s", 2)
    worker = _start(worker_factory, "-c", "1")
    running = wait_for(lambda: (r := results.get(jid)) and r.status == "running"
                       and r.progress is not None and r, timeout=20, message=worker.output)
    assert running.progress_message.startswith("step ") and running.started_at is not None
    assert results.get(jid).wait(timeout=20).value == {"steps": 3}
    wait_for(lambda: api.Batch(b.bid).succeeded, timeout=20, message=worker.output)
    assert api.Batch(b.bid).total == 3 and _hget_int(redis_client, "test:runs", "s-1") == 1


def test_a_failing_async_job_retries(redis_client, worker_factory):
    worker = _start(worker_factory, "-c", "1")
    aj.flaky.enqueue("f")
    wait_for(lambda: _hget_int(redis_client, "test:runs", "f") == 1, timeout=30,
             message=worker.output)
    assert _hget_int(redis_client, "test:attempts", "f") == 3
    # Counts reach stat:* with the heartbeat; the last one is written as the worker stops.
    worker.send(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert _stat(redis_client, "failed") == 2
    assert "ValueError: attempt 1 failed" in worker.output()


def test_an_async_job_past_its_limit_fails_with_jobtimeout(redis_client, worker_factory):
    worker = _start(worker_factory, "-c", "1")
    aj.overrun.enqueue("t")
    aj.nap.enqueue("after", 0.01)  # the loop runs on
    wait_for(lambda: redis_client.zcard("dead") == 1, timeout=20, message=worker.output)
    [dead] = [json.loads(m) for m in redis_client.zrange("dead", 0, -1)]
    assert dead["error_class"] == "django_kiq.exceptions.JobTimeout"
    assert "time limit of 0.5s" in dead["error_message"]
    started = float(redis_client.hget("test:started_at", "t"))
    assert dead["failed_at"] - started < 0.5 + 1.5  # the limit, not the job's 30 s sleep
    assert _hget_int(redis_client, "test:runs", "t") == 0
    wait_for(lambda: _hget_int(redis_client, "test:runs", "after") == 1, timeout=10)


def test_cancel_a_running_async_job(redis_client, worker_factory):
    worker = _start(worker_factory, "-c", "1")
    jid = aj.wait_to_be_cancelled.enqueue("run")
    wait_for(lambda: _hget_int(redis_client, "test:started", "run"), timeout=20,
             message=worker.output)
    assert redis_client.hget("test:ctx", "run").decode() == jid  # current_job() in a task
    cancel_while_running(redis_client, worker, jid, "run")


def test_async_jobs_of_a_killed_worker_are_recovered(redis_client, worker_factory):
    first = _start(worker_factory, "-c", "1", "--async-concurrency", "50")
    aj.wait_to_be_cancelled.enqueue_many([(f"k{i}", 2) for i in range(20)])
    wait_for(lambda: redis_client.hlen("test:started") == 20, timeout=20,
             message=first.output)
    held = [redis_client.llen(k) for k in redis_client.scan_iter("kiq:wip:*")
            if redis_client.type(k) == b"list"]
    assert sum(held) == 20  # in the in-progress list until settled, like thread jobs
    first.send(signal.SIGKILL)
    first.wait(10)
    second = _start(worker_factory, "-c", "1")
    wait_for(lambda: redis_client.hlen("test:runs") == 20, timeout=30,
             message=second.output)
    assert all(int(v) == 2 for v in redis_client.hvals("test:started"))
    assert redis_client.llen("queue:default") == 0


def test_a_stop_waits_for_running_async_jobs(redis_client, worker_factory):
    worker = _start(worker_factory, "-c", "1")
    aj.nap.enqueue_many([(f"s{i}", 1.0) for i in range(30)])
    wait_for(lambda: redis_client.llen("queue:default") == 0, timeout=20,
             message=worker.output)
    worker.send(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert redis_client.llen("test:async:spans") == 30

"""Execution control end to end: time limits, cancellation, expiry, unique and iterable jobs.

Real Redis, real worker subprocesses (``tests.control_jobs`` holds their jobs); the test process
is the "other process" that enqueues and cancels.
"""

import json
import signal
import threading
import time

import pytest

from django_kiq import DuplicateJob, api
from tests import control_jobs as cj
from tests.conftest import wait_for

IMPORTS = {"KIQ_IMPORTS": "tests.jobs,tests.control_jobs"}


def _start(worker_factory, *args, **env):
    return worker_factory(*args, env={**IMPORTS, **env})


def _hget_int(redis_client, key, field):
    value = redis_client.hget(key, field)
    return int(value) if value is not None else 0


def _stat(redis_client, name):
    return int(redis_client.get(f"stat:{name}") or 0)


def _set_jobs(redis_client, name):
    return [json.loads(m) for m in redis_client.zrange(name, 0, -1)]


# -- time limits ------------------------------------------------------------------------------

def test_a_python_loop_past_its_limit_fails_with_jobtimeout_and_its_thread_runs_on(
        redis_client, worker_factory):
    worker = _start(worker_factory, "-c", "1")
    cj.spin.enqueue("loop")
    cj.where_am_i.enqueue("next")
    wait_for(lambda: redis_client.hget("test:ctx", "next"), timeout=20,
             message=worker.output)
    [failed] = _set_jobs(redis_client, "retry")
    assert failed["error_class"] == "django_kiq.exceptions.JobTimeout"
    assert "time limit of 0.5s" in failed["error_message"]
    started = float(redis_client.hget("test:started_at", "loop"))
    assert failed["failed_at"] - started < 0.5 + 1.0 + 1.0  # limit + delivery bound + slack
    # The same (only) processor thread ran the next job: no thread was lost.
    assert redis_client.hget("test:thread", "loop") == redis_client.hget("test:thread", "next")
    worker.send(signal.SIGTERM)
    assert worker.wait(20) == 0


def test_current_job_describes_the_run(redis_client, worker_factory):
    _start(worker_factory, "-c", "2")
    jid = cj.where_am_i.set(timeout=30).enqueue("ctx")
    value = wait_for(lambda: redis_client.hget("test:ctx", "ctx"), timeout=20).decode()
    got_jid, attempt, queue, deadline = value.split("|")
    assert (got_jid, attempt, queue) == (jid, "1", "default")
    assert 0 < float(deadline) - time.time() <= 30


def test_a_job_blocked_in_c_is_marked_stuck(redis_client, worker_factory):
    worker = _start(worker_factory, "-c", "1")
    cj.sleep_in_c.enqueue("c", 6.5)
    wait_for(lambda: _hget_int(redis_client, "test:started", "c"), timeout=20)

    def stuck_work():
        return [json.loads(v) for k in redis_client.scan_iter("*:work")
                for v in redis_client.hvals(k) if json.loads(v).get("stuck")]

    wait_for(stuck_work, timeout=10, message=worker.output)
    [process] = api.ProcessSet().list()
    assert [w.stuck for w in process.work] == [True]
    wait_for(lambda: "stuck jid=" in worker.output(), timeout=5, message=worker.output)
    # When the sleep returns, the pending JobTimeout fails it: ordinary failure, no retry left.
    wait_for(lambda: redis_client.zcard("dead") == 1, timeout=10, message=worker.output)
    assert _hget_int(redis_client, "test:runs", "c") == 0


# -- cancellation -----------------------------------------------------------------------------

def test_cancel_waiting_jobs_of_each_kind(redis_client):
    queued = cj.where_am_i.set(queue="parked").enqueue("q")
    scheduled = cj.where_am_i.enqueue_in(3600, "s")
    redis_client.zadd("retry", {json.dumps({"class": "tests.control_jobs.where_am_i",
                                            "args": ["r"], "jid": "r" * 24, "queue": "default",
                                            "retry": True, "retry_count": 0}): time.time() + 60})
    assert api.cancel(queued) == "queue"
    assert api.cancel(scheduled, by="alice") == "scheduled"
    assert api.cancel("r" * 24) == "retry"
    assert api.cancel("f" * 24) is None
    assert redis_client.llen("queue:parked") == 0
    assert redis_client.zcard("schedule") == 0 and redis_client.zcard("retry") == 0
    assert _stat(redis_client, "cancelled") == 3


def test_cancel_a_running_job_from_another_process(redis_client, worker_factory):
    worker = _start(worker_factory, "-c", "2")
    jid = cj.wait_to_be_cancelled.enqueue("run")
    wait_for(lambda: _hget_int(redis_client, "test:started", "run"), timeout=20)
    cancel_while_running(redis_client, worker, jid, "run")
    assert api.cancel(jid) is None  # finished: a no-op


def cancel_while_running(redis_client, worker, jid: str, token: str) -> None:
    """Cancel a running ``wait_to_be_cancelled`` job as "bob" from this process and check it
    ends cancelled within a second: cleaned up, not retried, dead, run or failed; then stop
    the worker (also used by tests/test_async.py for jobs on the event loop)."""
    asked = time.monotonic()
    assert api.cancel(jid, by="bob") == "running"
    wait_for(lambda: _hget_int(redis_client, "test:cleanup", token), timeout=5)
    assert time.monotonic() - asked < 1.0 + 0.2  # within 1 s (plus a test poll step)
    wait_for(lambda: _stat(redis_client, "cancelled") == 1, timeout=5)
    time.sleep(0.3)
    assert redis_client.zcard("retry") == 0 and redis_client.zcard("dead") == 0
    assert _hget_int(redis_client, "test:runs", token) == 0
    worker.send(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert _stat(redis_client, "failed") == 0
    assert "cancelled jid=" in worker.output() and "by bob" in worker.output()


def test_a_cancelled_job_recovered_from_a_killed_worker_never_runs(redis_client,
                                                                     worker_factory):
    first = _start(worker_factory, "-c", "1")
    jid = cj.wait_to_be_cancelled.enqueue("rec", 30)
    wait_for(lambda: _hget_int(redis_client, "test:started", "rec"), timeout=20)
    first.send(signal.SIGKILL)
    first.wait(10)
    assert api.cancel(jid) == "running"  # its dead process still lists it until recovery
    _start(worker_factory, "-c", "1")
    wait_for(lambda: _stat(redis_client, "cancelled") == 1, timeout=20)
    assert _hget_int(redis_client, "test:started", "rec") == 1  # never started again
    assert redis_client.llen("queue:default") == 0


# -- expiry -----------------------------------------------------------------------------------

def test_an_expired_job_is_dropped_and_counted(redis_client, worker_factory):
    cj.expiring.enqueue("late")
    cj.expiring.enqueue_in(0.5, "late-scheduled")
    time.sleep(1.6)  # both are past their expiry (the scheduled one: 1 s after its due time)
    worker = _start(worker_factory, "-c", "2")
    wait_for(lambda: _stat(redis_client, "expired") == 2, timeout=20, message=worker.output)
    # Enqueued once the worker runs: a start slower than its 1 s expiry would drop it too.
    cj.expiring.enqueue("fresh")
    wait_for(lambda: _hget_int(redis_client, "test:runs", "fresh"), timeout=10,
             message=worker.output)
    assert _stat(redis_client, "expired") == 2
    assert _hget_int(redis_client, "test:runs", "late") == 0
    assert _hget_int(redis_client, "test:runs", "late-scheduled") == 0
    # Log lines go through the worker's writer thread: they follow the counts within ~10 ms.
    wait_for(lambda: "expired jid=" in worker.output(), timeout=5, message=worker.output)


# -- unique jobs ------------------------------------------------------------------------------

def _locks(redis_client):
    return list(redis_client.scan_iter("kiq:unique:*"))


def test_exactly_one_of_many_concurrent_unique_enqueues_runs(redis_client, worker_factory):
    results, barrier = [], threading.Barrier(4)

    def enqueue_many_times():
        barrier.wait()
        results.extend(cj.unique_record.enqueue("once", 1.0) for _ in range(25))

    threads = [threading.Thread(target=enqueue_many_times) for _ in range(4)]
    workers = [_start(worker_factory, "-c", "5") for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in results if r is not None]) == 1
    wait_for(lambda: _hget_int(redis_client, "test:runs", "once") == 1, timeout=30,
             message=workers[0].output())
    wait_for(lambda: not _locks(redis_client), timeout=5)  # released on success
    time.sleep(0.5)
    assert _hget_int(redis_client, "test:started", "once") == 1
    assert cj.unique_record.enqueue("once") is not None  # free again


def test_unique_enqueue_is_one_round_trip_and_dedupes_a_batch(redis_client):
    jids = cj.unique_record.enqueue_many([("a",), ("a",), ("b",)])
    assert jids[0] is not None and jids[1] is None and jids[2] is not None
    assert cj.unique_record.enqueue("a") is None
    with pytest.raises(DuplicateJob) as info:
        cj.unique_raising.enqueue("x")
        cj.unique_raising.enqueue("x")
    assert info.value.jid is not None
    assert cj.unique_per_account.enqueue(7, 1) is not None
    assert cj.unique_per_account.enqueue(7, 2) is None  # unique_key: same account
    assert cj.unique_per_account.enqueue(8, 1) is not None
    [lock] = [k for k in _locks(redis_client)
              if redis_client.get(k) == jids[0].encode()]
    assert 0 < redis_client.pttl(lock) <= 60_000
    at_jid = cj.unique_record.enqueue_in(600, "later")
    assert at_jid is not None
    later = [k for k in _locks(redis_client) if redis_client.get(k) == at_jid.encode()]
    assert redis_client.pttl(later[0]) > 600_000  # unique_for plus the delay


def test_the_lock_is_released_on_each_way_a_job_ends(redis_client, worker_factory):
    # Waiting paths first (no worker): cancelled, deleted through the API.
    cancelled = cj.unique_record.set(queue="parked").enqueue("c")
    api.cancel(cancelled)
    assert cj.unique_record.set(queue="parked").enqueue("c") is not None  # lock was released
    scheduled = cj.unique_record.enqueue_in(600, "d")
    api.ScheduledSet().delete(api.ScheduledSet().find(scheduled))
    assert cj.unique_record.enqueue_in(600, "d") is not None
    redis_client.delete("queue:parked", "schedule")
    for key in _locks(redis_client):
        redis_client.delete(key)
    # Running paths: success, death, start (unique_until="start").
    worker = _start(worker_factory, "-c", "3")
    cj.unique_record.enqueue("ok")
    cj.unique_record.set(retry=False).enqueue("dies", 0, True)
    cj.unique_until_start.enqueue("start", 2.0)
    wait_for(lambda: _hget_int(redis_client, "test:started", "start"), timeout=20)
    wait_for(lambda: _hget_int(redis_client, "test:runs", "ok")
             and _hget_int(redis_client, "test:started", "dies"), timeout=20)
    wait_for(lambda: not _locks(redis_client), timeout=5, message=worker.output)
    assert _hget_int(redis_client, "test:started", "start") == 1  # still running, lock gone
    # Retry keeps the lock (the job is pending retry).
    retried = cj.unique_record.enqueue("retry", 0, True)
    wait_for(lambda: redis_client.zcard("retry") == 1, timeout=20)
    assert [redis_client.get(k) for k in _locks(redis_client)] == [retried.encode()]


def test_expiry_releases_the_lock(redis_client, worker_factory):
    job = cj.unique_record.set(expires_in=0.5)
    job.enqueue("exp")
    time.sleep(0.8)
    _start(worker_factory, "-c", "1")
    wait_for(lambda: _stat(redis_client, "expired") == 1, timeout=20)
    wait_for(lambda: not _locks(redis_client), timeout=5)


def test_a_killed_worker_holding_a_unique_job(redis_client, worker_factory):
    first = _start(worker_factory, "-c", "1")
    cj.unique_record.enqueue("k", 2.0)
    wait_for(lambda: _hget_int(redis_client, "test:started", "k"), timeout=20)
    first.send(signal.SIGKILL)
    first.wait(10)
    assert cj.unique_record.enqueue("k", 2.0) is None  # the lock outlives its holder's process
    _start(worker_factory, "-c", "1")
    wait_for(lambda: _hget_int(redis_client, "test:runs", "k") == 1, timeout=30)
    wait_for(lambda: not _locks(redis_client), timeout=5)
    assert _hget_int(redis_client, "test:started", "k") == 2  # recovered and run once more


# -- iterable jobs ----------------------------------------------------------------------------

def _ledger(redis_client, token):
    return [int(x) for x in redis_client.lrange(f"test:ledger:{token}", 0, -1)]


def test_a_killed_iterable_job_resumes_from_its_last_checkpoint(redis_client, worker_factory):
    env = {"KIQ_CHECKPOINT_INTERVAL": "0.2"}
    first = _start(worker_factory, "-c", "1", **env)
    jid = cj.ledger.enqueue("L", 150, 0.02)
    wait_for(lambda: len(_ledger(redis_client, "L")) >= 40, timeout=20)
    first.send(signal.SIGKILL)
    first.wait(10)
    cursor = json.loads(redis_client.hget(f"kiq:cursor:{jid}", "cursor"))
    assert cursor >= 20
    _start(worker_factory, "-c", "1", **env)
    wait_for(lambda: _hget_int(redis_client, "test:runs", "L") == 1, timeout=30)
    items = _ledger(redis_client, "L")
    assert sorted(set(items)) == list(range(150))
    repeated = len(items) - 150
    assert repeated <= 0.2 / 0.02 + 5  # only what was done after the last checkpoint
    # Ended with the job, in its settle step: sent with the fetcher's next pass.
    wait_for(lambda: not redis_client.exists(f"kiq:cursor:{jid}"), timeout=5)


def test_a_stopped_iterable_job_checkpoints_and_resumes_without_repeats(redis_client,
                                                                         worker_factory):
    first = _start(worker_factory, "-c", "1", KIQ_CHECKPOINT_INTERVAL="60")
    cj.ledger.enqueue("T", 120, 0.02)
    wait_for(lambda: len(_ledger(redis_client, "T")) >= 20, timeout=20)
    first.send(signal.SIGTERM)
    assert first.wait(20) == 0
    assert redis_client.llen("queue:default") == 1  # requeued at the checkpoint
    _start(worker_factory, "-c", "1")
    wait_for(lambda: _hget_int(redis_client, "test:runs", "T") == 1, timeout=30)
    assert _ledger(redis_client, "T") == list(range(120))


def test_an_iterable_job_can_be_cancelled_between_items(redis_client, worker_factory):
    _start(worker_factory, "-c", "1")
    jid = cj.ledger.enqueue("C", 10_000, 0.01)
    wait_for(lambda: len(_ledger(redis_client, "C")) >= 5, timeout=20)
    assert api.cancel(jid) == "running"
    wait_for(lambda: _stat(redis_client, "cancelled") == 1, timeout=5)
    assert not redis_client.exists(f"kiq:cursor:{jid}")

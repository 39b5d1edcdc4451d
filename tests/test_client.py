"""Enqueueing against the real Redis: job hashes, scheduling, bulk, transactions, errors."""

import datetime as dt
import json
import time

import pytest
from django.conf import settings
from django.db import transaction
from django.test import override_settings

from django_kiq import EnqueueError, PayloadTooLarge
from tests import jobs


def _queue(redis_client, name="default"):
    return [json.loads(raw) for raw in redis_client.lrange(f"queue:{name}", 0, -1)]


def test_enqueue_writes_sidekiq_job_hash(redis_client):
    before = time.time()
    jid = jobs.record_kwargs.enqueue(1, b="x")
    [job] = _queue(redis_client)
    assert job["jid"] == jid and len(jid) == 24
    assert job["class"] == "tests.jobs.record_kwargs"
    assert job["args"] == [1] and job["kwargs"] == {"b": "x"}
    assert job["queue"] == "default" and job["retry"] is True
    assert before <= job["created_at"] <= job["enqueued_at"] <= time.time()
    assert isinstance(job["enqueued_at"], float)
    assert redis_client.smembers("queues") == {b"default"}


def test_delay_is_enqueue_and_set_changes_queue(redis_client):
    jobs.record.delay("a")
    jobs.record.set(queue="critical", retry=False).enqueue("b")
    assert [j["args"] for j in _queue(redis_client)] == [["a"]]
    [critical] = _queue(redis_client, "critical")
    assert critical["retry"] is False and critical["queue"] == "critical"


def test_non_json_argument_rejected_before_redis(redis_client):
    with pytest.raises(TypeError, match="argument 0"):
        jobs.record.enqueue(dt.datetime.now())
    assert redis_client.llen("queue:default") == 0


def test_enqueue_in_and_at_write_schedule_set(redis_client):
    now = time.time()
    jid1 = jobs.record.enqueue_in(60, "x")
    jid2 = jobs.record.enqueue_in(dt.timedelta(minutes=2), "y")
    jid3 = jobs.record.enqueue_at(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), "z")
    jid4 = jobs.record.enqueue_at(now + 30, "w")
    rows = {json.loads(m)["jid"]: score for m, score in
            redis_client.zrange("schedule", 0, -1, withscores=True)}
    assert set(rows) == {jid1, jid2, jid3, jid4}
    assert rows[jid1] == pytest.approx(now + 60, abs=2)
    assert rows[jid2] == pytest.approx(now + 120, abs=2)
    assert rows[jid3] == pytest.approx(now + 3600, abs=2)
    assert rows[jid4] == pytest.approx(now + 30, abs=0.01)
    assert redis_client.llen("queue:default") == 0


def test_enqueue_at_past_runs_now_and_naive_rejected(redis_client):
    jobs.record.enqueue_at(time.time() - 10, "past")
    assert redis_client.llen("queue:default") == 1
    assert redis_client.zcard("schedule") == 0
    with pytest.raises(ValueError, match="aware"):
        jobs.record.enqueue_at(dt.datetime(2030, 1, 1), "naive")


def test_enqueue_many_pipelines_in_batches(redis_client):
    jids = jobs.record.enqueue_many([(i,) for i in range(2500)])
    assert len(set(jids)) == 2500
    queued = _queue(redis_client)
    assert len(queued) == 2500
    # LPUSH: the oldest is at the right end, the next to run.
    assert queued[-1]["args"] == [0] and queued[0]["args"] == [2499]
    with pytest.raises(TypeError, match="tuple of positional"):
        jobs.record.enqueue_many([1, 2])


@pytest.mark.django_db(transaction=True)
def test_enqueue_waits_for_commit(redis_client):
    with transaction.atomic():
        jid = jobs.record.enqueue("in-tx")
        assert len(jid) == 24
        assert redis_client.llen("queue:default") == 0
    assert _queue(redis_client)[0]["jid"] == jid


@pytest.mark.django_db(transaction=True)
def test_rollback_pushes_nothing(redis_client):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            jobs.record.enqueue("lost")
            jobs.record.enqueue_in(10, "lost")
            raise RuntimeError("rollback")
    assert redis_client.llen("queue:default") == 0
    assert redis_client.zcard("schedule") == 0


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_can_be_disabled(redis_client):
    with override_settings(KIQ={**settings.KIQ, "ENQUEUE_ON_COMMIT": False}):
        with transaction.atomic():
            jobs.record.enqueue("now")
            assert redis_client.llen("queue:default") == 1


def test_redis_down_raises_clear_error(redis_url):
    with override_settings(KIQ={**settings.KIQ, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        with pytest.raises(EnqueueError, match="could not enqueue") as info:
            jobs.record.enqueue("x")
        assert len(info.value.jid) == 24


def test_payload_size_limit(redis_client):
    with override_settings(KIQ={**settings.KIQ, "MAX_PAYLOAD_BYTES": 1000}):
        with pytest.raises(PayloadTooLarge, match="MAX_PAYLOAD_BYTES"):
            jobs.record.enqueue("x" * 2000)
        jobs.record.enqueue("x" * 500)
    assert redis_client.llen("queue:default") == 1


# -- the single-enqueue fast path (client._push_plain) writes what the pipeline writes ------------

def test_single_enqueue_writes_the_bytes_the_pipeline_writes(redis_client):
    jobs.record_kwargs.enqueue(1, b="é")  # the fast path: no middleware, batch, unique...
    jobs.record_kwargs.enqueue_many([(1,)])  # the pipeline (no kwargs through enqueue_many)
    jobs.record_kwargs.set(expires_in=60).enqueue(1, b="é")  # the pipeline: expiring
    fast, bulk, piped = [redis_client.lindex("queue:default", i) for i in (2, 1, 0)]

    def shape(raw):
        job = json.loads(raw)
        return [(k, v) for k, v in job.items() if k not in ("jid", "created_at", "enqueued_at",
                                                            "kiq_expires_at")]

    assert list(json.loads(fast)) == [k for k in json.loads(piped) if k != "kiq_expires_at"]
    assert shape(fast) == shape(piped)
    assert shape(bulk) == [(k, v) for k, v in shape(fast) if k != "kwargs"]
    job = json.loads(fast)
    assert job["created_at"] == job["enqueued_at"] and len(job["jid"]) == 24


def test_single_enqueue_runs_client_middleware_and_test_modes(redis_client):
    with override_settings(KIQ={**settings.KIQ, "CLIENT_MIDDLEWARE": [
            "tests.test_client.tagging_middleware"]}):
        jobs.record.enqueue("mw")
    assert _queue(redis_client)[0]["tagged"] is True
    from django_kiq import testing

    with testing.fake() as fake:
        jobs.record.enqueue("fake")
        assert [j["args"] for j in fake.jobs] == [["fake"]]
    assert redis_client.llen("queue:default") == 1


def tagging_middleware(next_push):
    def push(job):
        return next_push({**job, "tagged": True})
    return push


# The child only takes three jids and exits: safe even when the test process has threads.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_jids_are_unique_across_a_fork(redis_client):
    import os

    from django_kiq import payload

    payload.new_jid()  # the parent holds a pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's first jids come from a pool of its own
        os.write(write, "".join(payload.new_jid() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode()
    os.waitpid(pid, 0)
    mine = "".join(payload.new_jid() for _ in range(3))
    assert len(child) == 72 and child != mine


def test_enqueue_many_pauses_garbage_collection_only_for_the_call(redis_client):
    import gc

    seen = []

    def args():
        for i in range(3):
            seen.append(gc.isenabled())
            yield (i,)

    assert gc.isenabled()
    jobs.record.enqueue_many(args())
    assert seen == [False] * 3 and gc.isenabled()
    gc.disable()  # a process that turned collections off keeps them off
    try:
        jobs.record.enqueue_many([(1,)])
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(TypeError):
        jobs.record.enqueue_many([(object(),)])
    assert gc.isenabled() and redis_client.llen("queue:default") == 4

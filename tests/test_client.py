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

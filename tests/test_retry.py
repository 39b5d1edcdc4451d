"""Retry policy (pure) and the worker-side failure path against the real Redis."""

import json

import pytest
from django.conf import settings
from django.test import override_settings

from django_kiq import payload, retry
from django_kiq.conf import get_settings
from django_kiq.stats import Counters
from django_kiq.worker.processor import Processor
from django_kiq.worker.scheduler import Poller
from tests import jobs


def _job(**extra):
    return payload.build(name="tests.jobs.fail", args=["x"], kwargs={}, queue="default",
                         now=100.0, options={"retry": True, **extra})


def test_backoff_formula_bounds():
    assert retry.backoff(0, rand=lambda a, b: a) == 15
    assert retry.backoff(0, rand=lambda a, b: b) == 25
    assert retry.backoff(3, rand=lambda a, b: b) == 81 + 15 + 40


def test_first_failure_then_retried_fields():
    first = retry.decide(_job(), ValueError("bad"), default_max=25, now=200.0,
                         rand=lambda a, b: 0)
    assert first.kind == "retry" and first.at == 215.0
    assert first.job["retry_count"] == 0 and first.job["failed_at"] == 200.0
    assert first.job["error_class"] == "ValueError" and first.job["error_message"] == "bad"
    assert "retried_at" not in first.job and "error_backtrace" not in first.job
    second = retry.decide(first.job, KeyError("k"), default_max=25, now=300.0,
                          rand=lambda a, b: 0)
    assert second.job["retry_count"] == 1 and second.job["retried_at"] == 300.0
    assert second.job["failed_at"] == 200.0 and second.at == 300.0 + 16


def test_retry_limits_and_dead_flags():
    assert retry.decide(_job(retry=False), ValueError(), default_max=25, now=1).kind == "discard"
    assert retry.decide(_job(retry=0), ValueError(), default_max=25, now=1).kind == "dead"
    two = _job(retry=2)
    for _ in range(2):
        decision = retry.decide(two, ValueError(), default_max=25, now=1)
        assert decision.kind == "retry"
        two = decision.job
    assert retry.decide(two, ValueError(), default_max=25, now=1).kind == "dead"
    gone = retry.decide(_job(retry=0, dead=False), ValueError(), default_max=25, now=1)
    assert gone.kind == "discard"


def test_retry_in_callable_and_its_failures():
    assert retry.decide(_job(), ValueError(), default_max=25, now=10,
                        retry_in=lambda c, e, j: 5).at == 15
    assert retry.decide(_job(), ValueError(), default_max=25, now=10,
                        retry_in=lambda c, e, j: "kill").kind == "dead"
    assert retry.decide(_job(), ValueError(), default_max=25, now=10,
                        retry_in=lambda c, e, j: "discard").kind == "discard"
    broken = retry.decide(_job(), ValueError(), default_max=25, now=10,
                          retry_in=lambda c, e, j: 1 / 0, rand=lambda a, b: 0)
    assert broken.kind == "retry" and broken.at == 25


def _raise_deep(depth):
    if depth == 0:
        raise ValueError("m" * 20_000)
    _raise_deep(depth - 1)


def test_error_message_cut_and_backtrace_lines():
    try:
        _raise_deep(5)
    except ValueError as exc:
        decision = retry.decide(_job(backtrace=3), exc, default_max=25, now=1)
    assert len(decision.job["error_message"]) == 10_000
    assert len(decision.job["error_backtrace"]) == 3
    assert "raise ValueError" in decision.job["error_backtrace"][-1]


def test_retry_queue_option():
    decision = retry.decide(_job(retry_queue="slow"), ValueError(), default_max=25, now=1)
    assert decision.job["queue"] == "slow"


def _process(store, job_obj, *args):
    jid = job_obj.enqueue(*args)
    processor = Processor(settings=get_settings(), counters=Counters())
    [(queue, raw)], _ = store.fetch("test:1:abc", ["default"], 1)
    outcome = processor.process(queue, raw, "t0")
    return jid, outcome


@pytest.mark.django_db(transaction=True)
def test_failed_job_goes_to_retry_set_and_comes_back(store, redis_client):
    jid, outcome = _process(store, jobs.fail, "boom")
    assert outcome.kind == "retry"
    from django_kiq.worker.manager import Manager
    store.settle("test:1:abc", [Manager._settle_entry(outcome)])
    assert redis_client.llen("kiq:wip:test:1:abc") == 0
    [(member, score)] = redis_client.zrange("retry", 0, -1, withscores=True)
    failed = json.loads(member)
    assert failed["jid"] == jid and failed["retry_count"] == 0
    assert failed["error_message"] == "boom" and failed["error_class"] == "ValueError"
    # The poller moves it back when due (time injected, no sleeping).
    poller = Poller(store=store, identity="test:2:def", settings=get_settings())
    assert poller.poll_once(now=score - 1) == 0
    assert poller.poll_once(now=score + 1) == 1
    [back] = [json.loads(m) for m in redis_client.lrange("queue:default", 0, -1)]
    assert back["jid"] == jid and back["retry_count"] == 0 and back["enqueued_at"] > 0
    assert redis_client.zcard("retry") == 0 and redis_client.llen("kiq:wip:test:2:def|sched") == 0


@pytest.mark.django_db(transaction=True)
def test_exhausted_job_dead_with_backtrace_and_handlers(store, redis_client):
    seen = []
    with override_settings(KIQ={**settings.KIQ,
                                "DEATH_HANDLERS": ["tests.test_retry.record_death"],
                                "ERROR_HANDLERS": ["tests.test_retry.broken_handler"]}):
        DEATHS.clear()
        _, outcome = _process(store, jobs.fail_to_dead, "fatal")
        seen = list(DEATHS)
    assert outcome.kind == "dead"
    dead = json.loads(outcome.new)
    assert dead["error_class"] == "RuntimeError" and len(dead["error_backtrace"]) == 5
    assert 'raise RuntimeError(message)' in dead["error_backtrace"][-1]
    assert seen == [("tests.jobs.fail_to_dead", "fatal")]


@pytest.mark.django_db(transaction=True)
def test_no_retry_job_is_discarded(store):
    _, outcome = _process(store, jobs.fail_no_retry)
    assert outcome.kind == "discard"


DEATHS = []


def record_death(job, exc):
    DEATHS.append((job["class"], str(exc)))


def broken_handler(exc, context):
    raise RuntimeError("handlers must never break the worker")


def test_dead_set_trimmed_to_exact_cap(store, redis_client):
    with override_settings(KIQ={**settings.KIQ, "DEAD_MAX_JOBS": 5}):
        from django_kiq import storage
        capped = storage.get_default()
        for i in range(8):
            capped.add_dead(payload.encode(_job(n=i)), now=1000.0 + i)
        assert redis_client.zcard("dead") == 5
        kept = sorted(json.loads(m)["n"] for m in redis_client.zrange("dead", 0, -1))
        assert kept == [3, 4, 5, 6, 7]


def test_two_pollers_never_move_the_same_job(store, redis_client):
    for i in range(200):
        store.schedule([(50.0 + i * 0.001, payload.encode(_job(i=i)))])
    a = Poller(store=store, identity="h:1:a", settings=get_settings())
    b = Poller(store=store, identity="h:2:b", settings=get_settings())
    moved = a.poll_once(now=50.1) + b.poll_once(now=50.1) + a.poll_once(now=60) + \
        b.poll_once(now=60)
    assert moved == 200
    ids = [json.loads(m)["i"] for m in redis_client.lrange("queue:default", 0, -1)]
    assert sorted(ids) == list(range(200))

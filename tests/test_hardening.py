"""Regressions found by the chaos suite and the hardening work (issue 7), one test each.

- A poison pill took the jobs sharing its process to the dead set with it (chaos scenario 6).
- Redis full (OOM) killed the worker's fetcher and queue-waiter threads for good.
- Jobs fetched by a call in flight when the worker went quiet were buffered after quiet() had
  given the buffer back, so they could start during the shutdown or stay in progress.
The Sentinel reconnection bug has its test in tests/test_sentinel.py.
"""

import json

from django.conf import settings
from django.test import override_settings

from django_kiq import payload
from django_kiq.conf import get_settings
from django_kiq.stats import Counters
from django_kiq.worker.fetcher import Fetcher, QueueOrder, plan_recovery
from django_kiq.worker.manager import Manager
from django_kiq.worker.processor import Processor
from tests import jobs
from tests.conftest import fill_redis, private_redis, wait_for


# -- a job that kills its own worker ---------------------------------------------------------------

def _orphan(count: int, token: str) -> bytes:
    return payload.encode(payload.build(name="tests.jobs.record", args=[token], kwargs={},
                                        queue="default", now=1.0,
                                        options={"kiq_recoveries": count} if count else {}))


def test_jobs_that_died_with_others_get_their_last_chance_apart():
    # A poison pill takes the jobs sharing its process down with it. Requeued together at the
    # head, the same group would be fetched and killed together until all were dead; the
    # chaos suite's poison scenario showed it. Before the last chance they are spread out.
    group = [_orphan(1, "pill"), _orphan(1, "neighbour")]
    entries = plan_recovery(group, identity="h:3:p", poison_limit=3, now=100.0)
    assert [(e.kind, e.dest, e.score) for e in entries] == [("z", "retry", 102.0),
                                                            ("z", "retry", 104.0)]
    assert {json.loads(e.new)["error_class"] for e in entries} == {"django_kiq.ProcessDied"}
    assert {json.loads(e.new)["kiq_recoveries"] for e in entries} == {2}
    # Earlier deaths, or dying alone, still go straight back to the head of the queue.
    first = plan_recovery([_orphan(0, "a"), _orphan(0, "b")], identity="h", poison_limit=3,
                          now=1.0)
    alone = plan_recovery([_orphan(1, "a")], identity="h", poison_limit=3, now=1.0)
    assert [e.kind for e in first + alone] == ["q", "q", "q"]
    last = plan_recovery(group, identity="h", poison_limit=2, now=1.0)
    assert [e.kind for e in last] == ["d", "d"]  # over the limit: dead, PoisonJob


# -- Redis refusing writes -------------------------------------------------------------------------

def test_worker_survives_redis_being_full(worker_factory, redis_client, redis_url, tmp_path):
    # maxmemory + noeviction (what the system check asks for): when Redis is full, writes fail
    # with OOM. The worker's threads must back off and resume once there is room, not die while
    # the heartbeat keeps the process looking alive (its fetcher and queue waiter did).
    with private_redis(tmp_path, "--maxmemory", "4mb",
                       "--maxmemory-policy", "noeviction") as (url, full):
        worker = worker_factory("-c", "1", env={"KIQ_REDIS_URL": url,
                                                "KIQ_TEST_LEDGER_URL": redis_url})
        wait_for(lambda: full.scard("processes") == 1, timeout=20)
        # The idle fetcher polls every 2 s: LMOVE is refused when Redis is full, even from an
        # empty queue.
        met = ("fetcher: Redis unavailable (command not allowed when used memory",
               "Exception in thread kiq-fetcher")  # the latter: the thread died of it
        wait_for(lambda: fill_redis(full) or any(m in worker.output() for m in met), timeout=20,
                 interval=0.1, message="the fetcher never met the full Redis")
        full.delete("filler")
        with override_settings(KIQ={**settings.KIQ, "REDIS_URL": url}):
            jobs.record_in_ledger.enqueue_many([(f"oom{i}",) for i in range(3)])
        wait_for(lambda: all(redis_client.scard(f"ledger:oom{i}") for i in range(3)), timeout=20,
                 message="the worker did not resume once Redis had room again")
        assert "Exception in thread" not in worker.output(), worker.output()


# -- going quiet while a fetch is in flight --------------------------------------------------------

def test_jobs_fetched_after_going_quiet_are_given_back(store, redis_client):
    jobs.record.enqueue_many([("first",), ("second",)])
    fetcher = Fetcher(store, "h:4:q", QueueOrder([("default", 1)], True))
    manager = Manager(store=store, fetcher=fetcher, concurrency=1, queues=["default"],
                      processor=Processor(settings=get_settings(), counters=Counters()))
    in_flight = fetcher.fetch(2, [])  # the fetch call was on its way when...
    manager.quiet()  # ...TSTP, or a TERM's first step, emptied the buffer
    manager._dispatch(in_flight)  # its reply arrives: the fetcher thread dispatches it
    assert not manager._buffer  # nothing left to start during the shutdown
    assert redis_client.llen("kiq:wip:h:4:q") == 0
    queued = [json.loads(raw)["args"] for raw in redis_client.lrange("queue:default", 0, -1)]
    assert queued == [["second"], ["first"]]  # back at the head, in their order

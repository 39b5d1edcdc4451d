"""Reliable fetch pieces in-process: queue order, reconcile, orphan recovery and its guard."""

import json
import random
from collections import Counter

import pytest

from django_kiq import payload
from django_kiq.storage import Settle
from django_kiq.worker.fetcher import (Fetcher, QueueOrder, parse_queue_args, plan_recovery,
                                       recover_orphans)
from tests import jobs


def test_parse_queue_args():
    assert parse_queue_args(["a", "b"]) == ([("a", 1), ("b", 1)], True)
    assert parse_queue_args(["a,3", "b"]) == ([("a", 3), ("b", 1)], False)
    assert parse_queue_args([]) == ([("default", 1)], True)
    with pytest.raises(ValueError, match="positive integer"):
        parse_queue_args(["a,0"])


def test_strict_order_is_as_listed():
    order = QueueOrder([("a", 1), ("b", 1), ("c", 1)], strict=True)
    assert all(order.next() == ["a", "b", "c"] for _ in range(10))


def test_weighted_order_follows_weights():
    order = QueueOrder([("a", 3), ("b", 1)], strict=False, rng=random.Random(7))
    firsts = Counter(order.next()[0] for _ in range(20_000))
    assert firsts["a"] / 20_000 == pytest.approx(0.75, abs=0.02)
    assert sorted(order.next()) == ["a", "b"]


def test_fetch_moves_atomically_and_acks(store, redis_client):
    jobs.record.enqueue_many([(i,) for i in range(5)])
    fetcher = Fetcher(store, "h:1:x", QueueOrder([("default", 1)], True))
    got = fetcher.fetch(3, [])
    assert [json.loads(raw)["args"] for _, raw in got] == [[0], [1], [2]]
    assert redis_client.llen("queue:default") == 2 and redis_client.llen("kiq:wip:h:1:x") == 3
    more = fetcher.fetch(10, [raw for _, raw in got])
    assert len(more) == 2
    assert redis_client.lrange("kiq:wip:h:1:x", 0, -1)[::-1] == [raw for _, raw in more]


def test_reconcile_adopts_only_unknown_jobs(store, redis_client):
    jobs.record.enqueue_many([(i,) for i in range(4)])
    fetcher = Fetcher(store, "h:1:x", QueueOrder([("default", 1)], True))
    got = fetcher.fetch(4, [])
    known = [raw for _, raw in got[:2]]  # the reply of the other two was "lost"
    adopted = fetcher.reconcile(known)
    assert sorted(raw for _, raw in adopted) == sorted(raw for _, raw in got[2:])
    assert all(queue == "default" for queue, _ in adopted)


def test_recovery_waits_for_heartbeat_expiry(store, redis_client):
    jobs.record.enqueue_many([(i,) for i in range(3)])
    store.register("h:9:dead", "{}")
    redis_client.hset("h:9:dead", "beat", 1)  # still "alive"
    Fetcher(store, "h:9:dead", QueueOrder([("default", 1)], True)).fetch(3, [])
    assert recover_orphans(store, poison_limit=3) == 0
    assert redis_client.llen("kiq:wip:h:9:dead") == 3
    redis_client.delete("h:9:dead")  # heartbeat expired
    assert recover_orphans(store, poison_limit=3) == 3
    queued = [json.loads(r) for r in redis_client.lrange("queue:default", 0, -1)]
    assert [j["args"] for j in queued] == [[2], [1], [0]]  # original order restored
    assert all(j["kiq_recoveries"] == 1 for j in queued)
    assert redis_client.hlen("kiq:wip") == 0 and not redis_client.exists("kiq:wip:h:9:dead")


def test_guard_stops_recovery_if_owner_came_back(store, redis_client):
    jobs.record.enqueue("x")
    Fetcher(store, "h:8:back", QueueOrder([("default", 1)], True)).fetch(1, [])
    [raw] = store.wip_items("h:8:back")
    redis_client.hset("h:8:back", "beat", 1)
    entries = plan_recovery([raw], identity="h:8:back", poison_limit=3, now=1.0)
    assert store.settle("h:8:back", entries, guard=True) is None
    assert redis_client.llen("kiq:wip:h:8:back") == 1


def test_settle_acts_once(store, redis_client):
    jobs.record.enqueue("once")
    Fetcher(store, "h:7:s", QueueOrder([("default", 1)], True)).fetch(1, [])
    [raw] = store.wip_items("h:7:s")
    entry = Settle(kind="q", old=raw, new=raw, dest="default")
    assert store.settle("h:7:s", [entry]) == [1]
    assert store.settle("h:7:s", [entry]) == [0]  # a repeated call moves nothing
    assert redis_client.llen("queue:default") == 1


def test_malformed_orphan_goes_dead_with_raw_text(store, redis_client):
    redis_client.lpush("kiq:wip:h:6:m", b"\xffgarbage")
    store.register("h:6:m", "{}")
    assert recover_orphans(store, poison_limit=3) == 1
    [dead] = [json.loads(m) for m in redis_client.zrange("dead", 0, -1)]
    assert dead["raw_payload"] == "\\xffgarbage"


def test_poison_counting(store):
    raw = payload.encode(payload.build(name="x", args=[], kwargs={}, queue="q", now=1,
                                       options={"kiq_recoveries": 2}))
    [entry] = plan_recovery([raw], identity="h:1:p", poison_limit=3, now=5.0)
    assert entry.kind == "d" and json.loads(entry.new)["error_class"] == "django_kiq.PoisonJob"
    [entry] = plan_recovery([raw], identity="h:1:p", poison_limit=4, now=5.0)
    assert entry.kind == "q" and entry.dest == "q"


def test_paused_queue_is_skipped_until_resumed(store, redis_client):
    from django_kiq import api

    jobs.record.enqueue("d")
    jobs.record_other.enqueue("o")
    api.Queue("default").pause()
    fetcher = Fetcher(store, "h:5:p", QueueOrder([("default", 1), ("other", 1)], True))
    got = fetcher.fetch(5, [])
    assert [q for q, _ in got] == ["other"] and fetcher.paused == {"default"}
    api.Queue("default").resume()
    assert [q for q, _ in fetcher.fetch(5, [])] == ["default"] and fetcher.paused == set()

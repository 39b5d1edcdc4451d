"""Storage configuration: key namespace, reuse of a django-redis cache connection, heartbeats."""

import json

from django.conf import settings
from django.test import override_settings

from django_kiq import storage
from django_kiq.storage import Heartbeat
from django_kiq.worker.fetcher import Fetcher, QueueOrder
from tests import jobs


def test_namespace_prefixes_every_key(redis_client):
    with override_settings(KIQ={**settings.KIQ, "NAMESPACE": "app1"}):
        store = storage.get_default()
        jobs.record.enqueue("x")
        jobs.record.enqueue_in(100, "later")
        store.register("h:1:n", "{}")
        Fetcher(store, "h:1:n", QueueOrder([("default", 1)], True)).fetch(1, [])
        store.heartbeat(Heartbeat(identity="h:1:n", info="{}", busy=0, quiet=False, rss_kb=1,
                                  rtt_us=1, work={}, ttl=10, processed=1, failed=0))
    keys = {k.decode() for k in redis_client.keys("*")} - {"kiq:test-claim"}
    assert keys and all(k.startswith("app1:") for k in keys), keys
    assert {"app1:queues", "app1:schedule", "app1:kiq:wip:h:1:n", "app1:processes",
            "app1:h:1:n", "app1:stat:processed"} <= keys


def test_reuses_a_django_redis_cache_connection(redis_client, redis_url):
    caches = {"jobs": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}}
    with override_settings(CACHES=caches,
                           KIQ={"REDIS_CACHE_ALIAS": "jobs", "POLL_INTERVAL_MAX": 0.2}):
        from django_redis import get_redis_connection

        store = storage.get_default()
        assert store.client.connection_pool is get_redis_connection("jobs").connection_pool
        jid = jobs.record.enqueue("via-cache")
    [raw] = redis_client.lrange("queue:default", 0, -1)
    assert json.loads(raw)["jid"] == jid


def test_heartbeat_returns_remote_signals_in_order(store, redis_client):
    redis_client.lpush("h:2:s-signals", "TSTP")
    redis_client.lpush("h:2:s-signals", "TERM")
    beat = Heartbeat(identity="h:2:s", info=json.dumps({"pid": 2}), busy=1, quiet=True,
                     rss_kb=10, rtt_us=5, work={"t1": json.dumps({"queue": "q"})}, ttl=7,
                     processed=3, failed=1)
    assert store.heartbeat(beat, metrics={"x.y": {"p": 3, "f": 1, "ms": 12, "h0": 3}}) == \
        ["TSTP", "TERM"]
    assert not redis_client.exists("h:2:s-signals")
    assert redis_client.hget("h:2:s", "quiet") == b"true" and redis_client.ttl("h:2:s") <= 7
    assert redis_client.hgetall("h:2:s:work") == {b"t1": b'{"queue": "q"}'}
    assert int(redis_client.get("stat:failed")) == 1
    assert redis_client.smembers("processes") == {b"h:2:s"}
    hour_keys = [k for k in redis_client.keys("kiq:metrics:*:x.y")]
    assert len(hour_keys) == 1 and redis_client.hget(hour_keys[0], "p") == b"3"


def test_push_many_queues_in_one_call_keeps_order(store, redis_client):
    items = [("a", b"a1"), ("b", b"b1"), ("a", b"a2"), ("b", b"b2")] * 600
    store.push(items)
    assert redis_client.smembers("queues") == {b"a", b"b"}
    # The head (right end) is the first pushed: RPOP order is push order.
    assert redis_client.lrange("queue:a", -2, -1) == [b"a2", b"a1"]
    assert redis_client.llen("queue:a") == redis_client.llen("queue:b") == 1200


def test_queue_registered_again_after_being_dropped(store, redis_client):
    from django_kiq import api

    jobs.record.enqueue("a")
    assert api.Queue("default").clear() == 1
    assert redis_client.smembers("queues") == set()
    jobs.record.enqueue("b")  # this process forgot its registration with the clear
    assert redis_client.smembers("queues") == {b"default"}
    redis_client.delete("queues")  # e.g. another process cleared it, or Redis restarted
    store._registered["default"] -= 10  # ...more than REGISTER_EVERY ago
    jobs.record.enqueue("c")
    assert redis_client.smembers("queues") == {b"default"}

"""Redis Cluster mode (storage/cluster.py): a real local cluster, real worker subprocesses.

A session-scoped fixture starts 6 ``redis-server`` nodes (3 masters with a replica each,
tests/redis_cluster.py) and stops them by PID at the end; the failover test starts a cluster of
its own, since it kills a master. Jobs (tests/cluster_jobs.py) record every run in a ledger on
the test's own Redis DB, which never fails over, so runs, lost and duplicated jobs are counted
exactly. Queues "default", "critical" and "low" hash to the three different masters.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import redis
from django.conf import settings
from django.core.checks import Error
from django.test import override_settings

from django_kiq import api, storage
from django_kiq.checks import check_settings
from django_kiq.storage.cluster import ClusterStorage
from django_kiq.storage.keys import ClusterKeys, Keys
from tests import cluster_jobs
from tests.conftest import wait_for
from tests.redis_cluster import available, local_cluster

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))
QUEUES = ("default", "critical", "low")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as c:
        yield c


def _kiq(cluster) -> dict:
    return {**settings.KIQ, "REDIS_CLUSTER_URL": cluster.url, "IMPORTS": ["tests.cluster_jobs"],
            "ENQUEUE_ON_COMMIT": False}


@pytest.fixture
def store(cluster, redis_client):
    """The cluster, emptied, as the default storage; ``redis_client`` (the ledger) emptied too."""
    cluster.flush()
    with override_settings(KIQ=_kiq(cluster)):
        current = storage.get_default()
        assert isinstance(current, ClusterStorage)
        yield current
    storage.reset_default()


@pytest.fixture
def start_worker(cluster, worker_factory, redis_url):
    def start(*args: str, env: dict[str, str] | None = None):
        return worker_factory("-c", "5", *(a for q in QUEUES for a in ("-q", q)), *args, env={
            "KIQ_REDIS_CLUSTER_URL": cluster.url, "KIQ_TEST_LEDGER_URL": redis_url,
            "KIQ_IMPORTS": "tests.cluster_jobs", **(env or {})})
    return start


def runs(ledger: redis.Redis, tokens) -> dict[str, int]:
    pipe = ledger.pipeline(transaction=False)
    for token in tokens:
        pipe.scard(f"ledger:{token}")
    return dict(zip(tokens, pipe.execute()))


def all_ran(ledger, tokens) -> bool:
    return all(runs(ledger, tokens).values())


# -- key layout -------------------------------------------------------------------------------

def test_each_queue_has_one_slot_and_the_rest_shares_another(cluster):
    from redis.crc import key_slot

    keys = ClusterKeys()
    for queue in QUEUES:
        own = {key_slot(k.encode()) for k in (
            keys.queue(queue), keys.queue_wip("host:1:abc", queue), keys.queue_paused(queue),
            keys.queue_trash(queue, "t"))}
        assert len(own) == 1, queue
        assert keys.queue_of(keys.queue(queue)) == queue
    shared = {key_slot(k.encode()) for k in (
        keys.schedule, keys.retry, keys.dead, keys.queues, keys.processes, keys.stat("processed"),
        keys.process("host:1:abc"), keys.wip("host:1:abc", "sched"), keys.unique("d"),
        keys.limit("x"), keys.batch("b"), keys.job_result("j"), keys.outbox("default"),
        keys.settling("host:1:abc"), keys.wip_queues("host:1:abc"), keys.periodic_state())}
    assert len(shared) == 1
    masters = {cluster.master_of(keys.queue(q)) for q in QUEUES}
    assert len(masters) == 3, "the three test queues must live on three different masters"
    # Single-Redis mode keeps Sidekiq's names, untouched.
    assert Keys().queue("default") == "queue:default" and Keys().schedule == "schedule"
    assert ClusterKeys("app").queue("default") == "{app:q:default}queue:default"


@pytest.mark.parametrize("kiq, error_id", [
    ({"REDIS_CLUSTER_URL": "127.0.0.1:7000"}, "django_kiq.E040"),
    ({"REDIS_CLUSTER_NODES": [("127.0.0.1", "7000")]}, "django_kiq.E041"),
    ({"REDIS_CLUSTER_URL": "redis://127.0.0.1:7000",
      "REDIS_SENTINELS": [("127.0.0.1", 26379)], "REDIS_SENTINEL_MASTER": "m"}, "django_kiq.E042"),
    ({"REDIS_CLUSTER_URL": "redis://127.0.0.1:7000/3"}, "django_kiq.E043"),
])
def test_cluster_settings_are_checked(kiq, error_id):
    with override_settings(KIQ=kiq):
        errors = [e for e in check_settings() if isinstance(e, Error)]
    assert [e.id for e in errors] == [error_id], errors


# -- end to end with workers ------------------------------------------------------------------

def test_enqueue_fetch_run_on_three_shards(store, start_worker, redis_client):
    tokens = {q: [f"{q}-{i}" for i in range(30)] for q in QUEUES}
    cluster_jobs.run.enqueue_many([(t,) for t in tokens["default"]])
    cluster_jobs.run_critical.enqueue_many([(t,) for t in tokens["critical"]])
    for t in tokens["low"]:
        cluster_jobs.run_low.delay(t)
    assert store.queue_size("low") == 30
    worker = start_worker()
    every = [t for ts in tokens.values() for t in ts]
    wait_for(lambda: all_ran(redis_client, every), timeout=30, message=worker.output())
    assert set(runs(redis_client, every).values()) == {1}
    wait_for(lambda: api.Stats().processed >= 90, timeout=10)
    assert all(store.queue_size(q) == 0 for q in QUEUES)
    assert sorted(store.queue_names()) == sorted(QUEUES)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()
    assert store.orphans() == [] and store.in_progress() == []
    assert "Traceback" not in worker.output(), worker.output()


def test_retries_dead_scheduled_and_retry_now(store, start_worker, redis_client):
    cluster_jobs.fail_twice.delay("f")
    cluster_jobs.fail_to_dead.delay("d")
    at = time.time() + 1.0
    cluster_jobs.run_low.enqueue_at(at, "s")
    worker = start_worker()
    # fail_twice: retried through the retry set twice by the poller, then succeeds.
    wait_for(lambda: all_ran(redis_client, ["f:1", "f:2", "f:3", "d", "s"]), timeout=30,
             message=worker.output())
    assert store.set_size("retry") == 0
    wait_for(lambda: store.set_size("dead") == 1, timeout=5)
    assert redis_client.smembers("ledger:s") and time.time() >= at
    # Retry now from the dead set (set_requeue_batch.lua through the queue's outbox).
    assert api.DeadSet().retry_all() == 1
    wait_for(lambda: runs(redis_client, ["d"])["d"] == 2, timeout=15, message=worker.output())
    wait_for(lambda: store.set_size("dead") == 1, timeout=5)
    assert store.client.llen(store.keys.outbox("default")) == 0
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()
    assert "Traceback" not in worker.output(), worker.output()


def test_jobs_of_a_killed_worker_are_recovered(store, start_worker, redis_client):
    tokens = [f"k{i}" for i in range(15)]
    cluster_jobs.run.enqueue_many([(t, 2.0) for t in tokens[:5]])
    cluster_jobs.run_critical.enqueue_many([(t, 2.0) for t in tokens[5:10]])
    cluster_jobs.run_low.enqueue_many([(t, 2.0) for t in tokens[10:]])
    first = start_worker(env={"KIQ_PROCESS_TTL": "2", "KIQ_HEARTBEAT_INTERVAL": "0.5"})
    wait_for(lambda: len(store.in_progress()) >= 5, timeout=15, message=first.output())
    first.send(signal.SIGKILL)
    first.wait(timeout=10)
    held = store.in_progress()
    assert held, "the killed worker held no job"
    second = start_worker("-c", "15", env={"KIQ_PROCESS_TTL": "2",
                                           "KIQ_HEARTBEAT_INTERVAL": "0.5"})
    wait_for(lambda: all_ran(redis_client, tokens), timeout=40, message=second.output())
    # Jobs record their run after sleeping: a killed run recorded nothing, so each ran once.
    assert set(runs(redis_client, tokens).values()) == {1}
    assert "recovered" in second.output()
    wait_for(lambda: store.in_progress() == [], timeout=10)
    wait_for(lambda: len(store.orphans()) == 0, timeout=10)
    second.send(signal.SIGTERM)
    assert second.wait(timeout=20) == 0, second.output()


def test_unique_jobs_limits_and_a_batch(store, start_worker, redis_client):
    from django_kiq.batches import BatchStatus, batch

    first = cluster_jobs.unique_run.delay("u", 1.0)
    assert first is not None
    assert cluster_jobs.unique_run.delay("u", 1.0) is None  # the lock holds: dropped
    cluster_jobs.capped.enqueue_many([(f"c{i}", 0.2) for i in range(8)])
    with batch(description="cluster", on_success=cluster_jobs.run_low.s("batch-done")) as b:
        cluster_jobs.run.enqueue_many([(f"b{i}",) for i in range(5)])
        cluster_jobs.run_critical.delay("b5")
    workers = [start_worker(), start_worker()]
    members = [f"b{i}" for i in range(6)]
    every = ["u", *(f"c{i}" for i in range(8)), *members, "batch-done"]
    try:
        wait_for(lambda: all_ran(redis_client, every), timeout=30)
    except AssertionError:
        raise AssertionError((runs(redis_client, every),
                              "\n".join(w.output() for w in workers))) from None
    assert set(runs(redis_client, every).values()) == {1}
    assert int(redis_client.get("capped:max")) <= 2
    # The lock went with the success (settle's global step): the same job is accepted again.
    wait_for(lambda: cluster_jobs.unique_run.delay("u", 1.0) is not None, timeout=5)
    wait_for(lambda: runs(redis_client, ["u"])["u"] == 2, timeout=15)
    status = BatchStatus(b.bid)
    assert status.pending == 0 and status.total == 6, status
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=20) == 0, worker.output()
        assert "Traceback" not in worker.output(), worker.output()


def test_cron_fire_and_queue_admin_verbs(store):
    raw = b'{"class":"tests.cluster_jobs.run","args":["cron"],"jid":"c1","queue":"low"}'
    assert store.periodic_fire(name="every", tick=1000.0, identity="me", claim_ttl=60,
                               queue="low", raw=raw, jid="c1", now=1000.0) == 1
    assert store.periodic_fire(name="every", tick=1000.0, identity="other", claim_ttl=60,
                               queue="low", raw=raw, jid="c1", now=1000.0) == 0
    assert store.queue_range("low", 0, -1) == [raw]
    assert store.client.llen(store.keys.outbox("low")) == 0
    cluster_jobs.run.enqueue_many([(f"a{i}",) for i in range(3)])
    queue = api.Queue("default")
    assert queue.size() == 3
    assert queue.delete(queue.jobs()[0]) is True
    assert queue.size() == 2
    queue.pause()
    assert api.Queue("default").paused
    assert store.fetch("me", ["default"], 5) == ([], {"default"})
    queue.resume()
    assert len(store.fetch("me", ["default"], 1)[0]) == 1
    assert queue.clear() == 1 and queue.size() == 0
    assert "default" not in store.queue_names() or store.queue_size("default") == 0


def test_a_leftover_outbox_is_relayed_by_the_heartbeat_sweep(store):
    """A caller that died between a script and its relay left a job in an outbox: the next
    orphan pass of any worker pushes it to its queue."""
    store.client.sadd(store.keys.queues, "critical")
    store.client.lpush(store.keys.outbox("critical"), b'{"jid":"x","queue":"critical"}')
    store._next_sweep = 0.0
    assert store.orphans() == []
    assert store.queue_range("critical", 0, -1) == [b'{"jid":"x","queue":"critical"}']
    assert store.client.llen(store.keys.outbox("critical")) == 0


@pytest.mark.django_db
def test_admin_pages_read_a_cluster(store, admin_client):
    from django.urls import reverse

    cluster_jobs.run.enqueue_many([(f"a{i}",) for i in range(3)])
    cluster_jobs.run_critical.delay("c")
    cluster_jobs.run_low.enqueue_in(60, "later")
    store.add_dead(b'{"class":"x","jid":"dead1","queue":"low"}', time.time())
    for name, args in [("dashboard", []), ("stats", []), ("busy", []), ("queues", []),
                       ("queue", ["default"]), ("scheduled", []), ("retries", []),
                       ("dead", []), ("periodic", []), ("metrics", []), ("limits", []),
                       ("batches", [])]:
        response = admin_client.get(reverse(f"admin:django_kiq_{name}", args=args))
        assert response.status_code == 200, (name, response.content[:500])
    stats = api.Stats(queues=True)
    assert stats.enqueued == 4 and stats.scheduled_size == 1 and stats.dead_size == 1


def test_async_enqueue_takes_the_same_cluster_steps(store):
    import asyncio

    async def main():
        first = await cluster_jobs.run.aenqueue("a1")
        held = await cluster_jobs.unique_run.aenqueue("a2")
        again = await cluster_jobs.unique_run.aenqueue("a2")
        return first, held, again

    first, held, again = asyncio.run(main())
    assert first and held and again is None
    assert store.queue_size("default") == 2
    assert store.client.llen(store.keys.outbox("default")) == 0

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
    return {**settings.KIQ, "REDIS_CLUSTER_URL": cluster.url, "IMPORTS": ["tests.cluster_jobs"]}


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

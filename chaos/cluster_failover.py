"""Chaos scenario "cluster-failover": Redis Cluster masters killed while jobs flow (issue 14).

Runs on the chaos driver's main thread (the producer on its thread). It starts a local Redis
Cluster of its own (6 ``redis-server`` nodes, 3 masters with a replica each:
tests/redis_cluster.py) and a ledger server, points the driver's settings and 3 supervised
workers at the cluster (``KIQ["REDIS_CLUSTER_URL"]``), and while the producer enqueues it
SIGKILLs the master of the queue (its replica is promoted), then the master of the ``{kiq}`` keys
(schedule, retry, processes, stats). Unlike tests/test_cluster.py it does not wait for the
replicas before a kill: an enqueue the killed master acknowledged but had not replicated yet is
lost with it (Redis's asynchronous replication, docs/reliability.md "Redis Cluster"); the
verdict counts such losses apart from any other, which would be a bug.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import SimpleNamespace

from .cluster import RedisServer, WorkerPool, worker_env
from .ledger import KiqState, Ledger, Producer, Verdict
from .scenarios import finish, say


class ClusterState(KiqState):
    """KiqState's reads on the cluster, through the storage layer's cluster verbs."""

    def __init__(self, store) -> None:  # a django_kiq.storage.cluster.ClusterStorage
        super().__init__(store.client)
        self.store = store

    def dead_count(self) -> int:
        return self.store.set_size("dead")

    def dead_jobs(self) -> list[dict]:
        import json

        return [json.loads(raw) for raw in self.store.set_range("dead", 0, -1)]

    def pending(self) -> int:
        s = self.store
        names = s.queue_names()
        outboxes = sum(s.client.llen(s.keys.outbox(n)) for n in names)
        return (sum(s.queue_size(n) for n in names) + len(s.in_progress()) + outboxes
                + s.set_size("retry") + s.set_size("schedule"))


def cluster_failover(workdir: Path, quick: bool) -> list[Verdict]:
    from django.conf import settings
    from django.test import override_settings

    from django_kiq import storage
    from django_kiq.storage.keys import ClusterKeys
    from tests.redis_cluster import available, local_cluster

    total, duration = (3_000, 20) if quick else (10_000, 60)
    v = Verdict(scenario="cluster failover",
                settings="3 masters + 3 replicas, 3 workers x 5 threads, TTL 10/HB 1")
    if available() is not None:
        v.notes.append(f"skipped: {available()}")
        return [v]
    base = workdir / "cluster-failover"
    (base / "logs").mkdir(parents=True, exist_ok=True)
    led = RedisServer(base, "ledger")
    led.start()
    try:
        with local_cluster(base / "nodes") as nodes:
            override = override_settings(KIQ={**settings.KIQ, "REDIS_CLUSTER_URL": nodes.url})
            override.enable()
            storage.reset_default()
            env = worker_env(redis_url="redis://unused/0", ledger_url=led.url, extra={
                "KIQ_REDIS_CLUSTER_URL": nodes.url, "KIQ_PROCESS_TTL": "10",
                "KIQ_HEARTBEAT_INTERVAL": "1"})
            pool = WorkerPool(3, args=["-c", "5"], logdir=base / "logs", env=env)
            c = SimpleNamespace(pool=pool, ledger=Ledger(led.client()),
                                state=ClusterState(storage.get_default()))
            try:
                pool.start()
                producer = Producer(total=total, duration=duration * 0.9,
                                    rng=random.Random(14))
                producer.start()
                kills = []
                for key in (ClusterKeys().queue("default"), ClusterKeys().schedule):
                    time.sleep(duration / 3)
                    victim = nodes.master_of(key)
                    nodes.kill(victim)
                    kills.append(victim)
                    say(f"  killed master :{victim} (holds {key}); waiting for its replica")
                    begin = time.monotonic()
                    while victim in nodes.masters() or len(nodes.masters()) < 3:
                        if time.monotonic() - begin > 30:
                            raise TimeoutError(f"no replica of :{victim} was promoted")
                        time.sleep(0.05)
                    nodes.wait_healthy(timeout=30)
                    v.notes.append(f"master :{victim} ({key}) killed, its replica promoted "
                                   f"{time.monotonic() - begin:.1f}s later")
                producer.join()
                finish(v, c, producer, drain_timeout=120)
            finally:
                pool.stop()
                override.disable()
                storage.reset_default()
    finally:
        led.stop()
    v.expectation = ("lost 0 but enqueues a killed master acknowledged and had not replicated "
                     "(asynchronous replication); duplicates <= jobs in flight at the kills")
    v.ok = v.lost == 0 and v.dead == 0 and v.drain_s is not None
    if v.lost:
        v.notes.append(f"{v.lost} job(s) lost: enqueues acknowledged by a killed master in its "
                       "last moment before replication (the documented window)")
    return [v]

"""Redis Sentinel: a worker and a producer follow the master through two failovers, losing nothing.

The test starts its own primary, replica and sentinel (``redis-sentinel``, quorum 1, short
timeouts) on free loopback ports, a worker subprocess configured with ``KIQ["REDIS_SENTINELS"]``,
and enqueues through a Sentinel-managed client of its own. Jobs record each run in a ledger on the
test's own Redis DB, which never fails over. First a manual ``SENTINEL FAILOVER``, then a SIGKILL
of the new master; after each, more jobs are enqueued. Every job must run; a run twice is allowed
(a write to a master in its last moments can be lost: Redis replicates asynchronously) and is
printed. Settings validation for Sentinel is tested here too.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from django_kiq import EnqueueError, storage
from django_kiq.checks import check_settings
from tests import jobs
from tests.conftest import wait_for
from tests.test_checks import _free_port

MASTER = "kiqmaster"
needs_sentinel = pytest.mark.skipif(
    shutil.which("redis-sentinel") is None,
    reason="redis-sentinel is not installed (Debian: apt-get install redis-sentinel)")


@dataclass
class Topology:
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def sentinels(self) -> list[list]:
        # A sentinel that is down comes first: discovery must skip it, not stall on it.
        return [["127.0.0.1", self.ports["nobody"]], ["127.0.0.1", self.ports["sentinel"]]]

    def client(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], socket_timeout=5)

    def master_port(self) -> int:
        host, port = self.client("sentinel").sentinel_get_master_addr_by_name(MASTER)
        return int(port)


def _start_server(tmp: Path, name: str, port: int, *extra: str) -> subprocess.Popen:
    (tmp / name).mkdir()
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp / name), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def topology(tmp_path):
    t = Topology(ports={n: _free_port() for n in ("a", "b", "sentinel", "nobody")})
    try:
        t.procs["a"] = _start_server(tmp_path, "a", t.ports["a"])
        t.procs["b"] = _start_server(tmp_path, "b", t.ports["b"], "--replicaof", "127.0.0.1",
                                     str(t.ports["a"]))
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {t.ports['sentinel']}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {t.ports['a']} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n")
        t.procs["sentinel"] = subprocess.Popen(["redis-sentinel", str(conf)],
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)
        wait_for(lambda: _linked(t.client("b")), timeout=20, message="replica never synced")
        wait_for(lambda: _knows_replica(t), timeout=20, message="sentinel never saw the replica")
        yield t
    finally:
        for proc in t.procs.values():
            proc.kill()
            proc.wait(timeout=10)


def _linked(replica: redis.Redis) -> bool:
    try:
        return replica.info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


def _knows_replica(t: Topology) -> bool:
    try:
        return any(r["port"] == t.ports["b"] and not r["is_sdown"]
                   for r in t.client("sentinel").sentinel_slaves(MASTER))
    except redis.RedisError:
        return False


def _role(server: redis.Redis) -> str:
    try:
        return server.info("replication")["role"]
    except redis.RedisError:
        return "?"


def _runs(redis_client, tokens) -> dict[str, int]:
    pipe = redis_client.pipeline(transaction=False)
    for token in tokens:
        pipe.scard(f"ledger:{token}")
    return dict(zip(tokens, pipe.execute()))


def _enqueue(tokens, seconds=0.02) -> None:
    """Push, retrying while the client finds the new master (EnqueueError: nothing written)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            jobs.record_in_ledger.enqueue_many([(t, seconds) for t in tokens])
            return
        except EnqueueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _replicated(store) -> bool:
    """Block until a replica holds every write so far (WAIT), so a failover now loses none."""
    try:
        return store.client.wait(1, 2000) >= 1
    except redis.ConnectionError:
        return False


@needs_sentinel
def test_workers_and_producers_follow_two_failovers(topology, worker_factory, redis_client,
                                                    redis_url):
    t = topology
    kiq = {**settings.KIQ, "REDIS_URL": "redis://sentinel/0", "REDIS_SENTINELS": t.sentinels,
           "REDIS_SENTINEL_MASTER": MASTER}
    with override_settings(KIQ=kiq):
        store = storage.get_default()
        assert store.client.connection_pool.service_name == MASTER
        batches = [[f"{b}{i}" for i in range(300)] for b in "xyz"]
        _enqueue(batches[0])
        worker = worker_factory("-c", "5", env={
            "KIQ_REDIS_URL": "redis://sentinel/0", "KIQ_REDIS_SENTINELS": json.dumps(t.sentinels),
            "KIQ_REDIS_SENTINEL_MASTER": MASTER, "KIQ_TEST_LEDGER_URL": redis_url,
            # Longer than a failover takes, so the worker is never taken for dead meanwhile.
            "KIQ_PROCESS_TTL": "10", "KIQ_HEARTBEAT_INTERVAL": "1"})
        wait_for(lambda: sum(_runs(redis_client, batches[0]).values()) >= 60, timeout=30,
                 message="the worker did not start processing through Sentinel")

        # 1. A manual failover while jobs run: b becomes the master. a stays a writable master
        # for clients still connected to it until Sentinel turns it into b's replica (~10 s);
        # what is written there meanwhile is discarded then. The worker's runs there come back
        # as duplicates; an enqueue there would be lost, so this one waits for the switch.
        wait_for(lambda: _replicated(store), timeout=10)
        t.client("sentinel").execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_for(lambda: t.master_port() == t.ports["b"], timeout=20, message="no failover")
        wait_for(lambda: _role(t.client("a")) == "slave", timeout=30, message="a kept writing")
        _enqueue(batches[1])
        wait_for(lambda: all(_runs(redis_client, batches[0] + batches[1]).values()),
                 timeout=40, message="jobs were lost in the first failover")

        # 2. The new master dies (SIGKILL): Sentinel promotes a again.
        wait_for(lambda: _linked(t.client("a")), timeout=20, message="a never resynced")
        _enqueue(batches[2])
        wait_for(lambda: _replicated(store), timeout=10)
        t.procs["b"].send_signal(signal.SIGKILL)
        wait_for(lambda: t.master_port() == t.ports["a"], timeout=30, message="no failover")
        every = [tok for batch in batches for tok in batch]
        wait_for(lambda: all(_runs(redis_client, every).values()), timeout=40,
                 message="jobs were lost in the second failover")
        worker.send(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.output()

    runs = _runs(redis_client, every)
    duplicates = sum(n - 1 for n in runs.values() if n > 1)
    by_batch = {batch[0][0]: sum(runs[tok] - 1 for tok in batch) for batch in batches}
    print(f"sentinel failovers: {len(every)} jobs, lost 0, duplicates {duplicates} {by_batch}")
    output = worker.output()
    assert "Traceback" not in output, output
    assert "Redis is back" in output  # it noticed, backed off and carried on
    # Duplicates: batch x's runs on a after b's promotion (a's copy of them was discarded), and
    # what was in flight at the kill. The worker must reach b at once when a is demoted, so the
    # batches enqueued after the first failover run once, give or take jobs in flight.
    assert by_batch["y"] + by_batch["z"] <= 30, by_batch


@pytest.mark.parametrize("kiq, error_id", [
    ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "django_kiq.E014"),
    ({"REDIS_SENTINELS": [("127.0.0.1", "26379")]}, "django_kiq.E014"),
    ({"REDIS_SENTINELS": [("127.0.0.1",)]}, "django_kiq.E014"),
    ({"REDIS_SENTINELS": [("127.0.0.1", 26379)]}, "django_kiq.E015"),
    ({"REDIS_SENTINELS": [("127.0.0.1", 26379)], "REDIS_SENTINEL_MASTER": ""},
     "django_kiq.E015"),
    ({"REDIS_SENTINELS": [("127.0.0.1", 26379)], "REDIS_SENTINEL_MASTER": "m",
      "REDIS_CACHE_ALIAS": "default"}, "django_kiq.E018"),
    ({"REDIS_SENTINEL_OPTIONS": ["password"]}, "django_kiq.E016"),
])
def test_bad_sentinel_settings_are_errors(kiq, error_id):
    with override_settings(KIQ={**settings.KIQ, **kiq}):
        assert error_id in {e.id for e in check_settings()}


def test_good_sentinel_settings_pass_and_build_a_master_client():
    kiq = {**settings.KIQ, "REDIS_URL": "redis://:secret@ignored:1/3",
           "REDIS_SENTINELS": [("127.0.0.1", 26379), ["10.0.0.2", 26380]],
           "REDIS_SENTINEL_MASTER": "m", "REDIS_SENTINEL_OPTIONS": {"password": "s"}}
    with override_settings(KIQ=kiq):
        assert check_settings() == []
        pool = storage.get_default().client.connection_pool  # no connection is opened yet
        assert pool.service_name == "m"
        assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "secret"
        assert pool.connection_kwargs["retry"]._retries == 0  # no blind retries, as without it
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
        assert sentinels[0].connection_pool.connection_kwargs["password"] == "s"

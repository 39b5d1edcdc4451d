"""A real local Redis Cluster for tests and benchmarks: 6 ``redis-server`` nodes on free loopback
ports (3 masters with a replica each), created with ``redis-cli --cluster create``.

Each node runs in a directory of its own under the caller's temporary directory and is stopped by
its PID (never by name). :func:`local_cluster` yields a :class:`LocalCluster`; ``kill_master``
SIGKILLs one master so its replica is promoted (the failover test). Used by tests/test_cluster.py
and bench/cluster_spread.py.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

# Short enough that a failover takes ~2 s, long enough not to flap on a loaded 2-core machine.
NODE_TIMEOUT_MS = 1500


def available() -> str | None:
    """None if a cluster can be started here, else why not."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install redis-server)"
    return None


def _free_ports(n: int) -> list[int]:
    """n free loopback ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class LocalCluster:
    ports: list[int]
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports]

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        """Ports of the live masters that own slots (CLUSTER SLOTS as a live node sees it)."""
        alive = set(self.alive())
        for port in sorted(alive):
            try:
                with self.node(port) as client:
                    slots = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            return sorted({int(master[1]) for _, _, master, *_ in slots} & alive)
        return []

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        with self.node(self.alive()[0]) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise LookupError(key)

    def slots_of(self, port: int) -> list[tuple[int, int]]:
        """The slot ranges the master on ``port`` serves."""
        with self.node(self.alive()[0]) as client:
            return [(int(start), int(end)) for start, end, master, *_ in
                    client.execute_command("CLUSTER", "SLOTS") if int(master[1]) == port]

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and all 16384 slots have a live master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(_cluster_ok(self.node(p)) for p in self.alive()):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the local Redis Cluster did not become healthy")
            time.sleep(0.1)

    def commandstats(self) -> dict[int, int]:
        """port -> total commands each live master served so far (INFO commandstats)."""
        out = {}
        for port in self.masters():
            with self.node(port) as client:
                stats = client.info("commandstats")
            out[port] = sum(int(v["calls"]) for k, v in stats.items()
                            if k.startswith("cmdstat_") and not k.startswith("cmdstat_cluster"))
        return out

    def reset_commandstats(self) -> None:
        for port in self.alive():
            with self.node(port) as client:
                client.config_resetstat()

    def flush(self) -> None:
        """Empty every master (the cluster is this run's own)."""
        for port in self.masters():
            with self.node(port) as client:
                client.flushall()


def _cluster_ok(client: redis.Redis) -> bool:
    with client:
        info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text


@contextmanager
def local_cluster(directory: Path, *, masters: int = 3) -> Iterator[LocalCluster]:
    ports = _free_ports(masters * 2)
    cluster = LocalCluster(ports)
    try:
        for port in ports:
            node_dir = directory / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            cluster.procs[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "",
                 "--appendonly", "no", "--dir", str(node_dir),
                 "--maxmemory-policy", "noeviction"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in ports:
            _wait_ping(port)
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, timeout=60)
        cluster.wait_healthy()
        _wait_replicas(cluster, masters)
        yield cluster
    finally:
        for proc in cluster.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                if client.ping():
                    return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis-server on port {port} did not start")
        time.sleep(0.05)


def _wait_replicas(cluster: LocalCluster, masters: int, timeout: float = 20.0) -> None:
    """Until each master has a replica whose link is up (a failover needs one in sync)."""
    deadline = time.monotonic() + timeout
    while True:
        linked = 0
        for port in cluster.alive():
            with cluster.node(port) as client:
                info = client.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") == "up":
                    linked += 1
        if linked >= masters:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the replicas did not catch up with their masters")
        time.sleep(0.1)

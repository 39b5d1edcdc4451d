"""The processes a scenario runs: private Redis servers and supervised ``kiq_worker`` processes.

Runs in the chaos driver's main thread (plus the pool's supervisor thread). A :class:`RedisServer`
is a ``redis-server`` on a free loopback port with its own directory, which can be killed and
started again on the same port (AOF ``appendfsync always`` on request). A :class:`WorkerPool`
keeps N ``manage.py kiq_worker`` processes running like systemd's ``Restart=always``: a slot
whose process exits is started again; the scenario only sends signals.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class RedisServer:
    def __init__(self, workdir: Path, name: str, *, aof_always: bool = False):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.aof_always = aof_always
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.aof_always
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persistence, "--dir", str(self.dir), "--maxmemory-policy", "noeviction",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            if not wait_until(lambda: _pings(probe), 30):
                raise RuntimeError(f"redis-server {self.name} did not start on {self.port}")
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL: a crash. With AOF always every acknowledged write survives it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> redis.Redis:
        """A client for the driver: it retries through killed connections and restarts."""
        return redis.Redis(port=self.port, socket_timeout=30,
                           retry=Retry(ExponentialBackoff(cap=1.0, base=0.01), 60),
                           retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class Worker:
    """One ``manage.py kiq_worker`` process; its output goes to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "kiq_worker", *args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def close(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


class WorkerPool:
    """N worker slots; a slot whose process exited is restarted by the supervisor thread."""

    def __init__(self, size: int, *, args: list[str], env: dict[str, str], logdir: Path,
                 restart_delay: float = 0.1):
        self.size = size
        self.args = args
        self.env = env
        self.logdir = logdir
        self.restart_delay = restart_delay
        self.slots: list[Worker] = []
        self.retired: list[Worker] = []
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> Worker:
        self._count += 1
        return Worker(self.args, self.env, self.logdir / f"worker-{self._count:03d}.log")

    def start(self) -> None:
        with self._lock:
            self.slots = [self._spawn() for _ in range(self.size)]
        self._thread = threading.Thread(target=self._supervise, name="chaos-supervisor",
                                        daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                for i, worker in enumerate(self.slots):
                    if not worker.alive():
                        self.retired.append(worker)
                        if self.restart_delay:
                            time.sleep(self.restart_delay)
                        self.slots[i] = self._spawn()

    def signal_random(self, sig: int, rng: random.Random) -> Worker:
        with self._lock:
            live = [w for w in self.slots if w.alive()]
            worker = rng.choice(live or self.slots)
            worker.send(sig)
            return worker

    def all_workers(self) -> list[Worker]:
        with self._lock:
            return self.retired + self.slots

    def stop(self, timeout: float = 30) -> list[int | None]:
        """TERM every live worker and wait; returns the exit codes of the last generation."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for worker in self.slots:
            worker.send(signal.SIGTERM)
        codes = []
        for worker in self.slots:
            try:
                codes.append(worker.proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                codes.append(None)
        for worker in self.retired + self.slots:
            worker.close()
        return codes

    def logs(self) -> str:
        return "".join(w.log_path.read_text(errors="replace") for w in self.all_workers())


def worker_env(*, redis_url: str, ledger_url: str, extra: dict[str, str] | None = None,
               ) -> dict[str, str]:
    """The environment testproject/settings.py reads, for a chaos worker."""
    return {
        **os.environ, "KIQ_REDIS_URL": redis_url, "KIQ_CHAOS_LEDGER_URL": ledger_url,
        "KIQ_IMPORTS": "chaos.jobs", "KIQ_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "testproject.settings", **(extra or {}),
    }

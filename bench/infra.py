"""What the benchmark stands on: its Redis, worker subprocesses, RSS/CPU sampling, the machine.

Runs in the ``bench/run.py`` process (main thread, plus one sampler thread per watched worker).
Lifecycle: :class:`RedisTarget` starts a private ``redis-server`` (or claims an empty DB given
with ``--redis``) and :meth:`RedisTarget.close` stops or empties it; every subprocess the
benchmark starts is tracked in :data:`STARTED` and :func:`cleanup` ends them by pid.
"""

from __future__ import annotations

import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
CLAIM_KEY = "bench:claim"
# Empties the DB only while it still carries our claim (so --redis never wipes someone else's).
RESET = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('FLUSHDB') "
         "redis.call('SET', KEYS[1], ARGV[1]) return 1 end return 0")
STARTED: list[subprocess.Popen] = []
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cleanup(keep: subprocess.Popen | None = None) -> None:
    """End every subprocess this run started that is still alive, newest first (workers before
    the Redis they use), by pid: TERM, then KILL after 15 s. ``keep`` is left running."""
    for proc in reversed(STARTED):
        if proc is keep or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisTarget:
    """The Redis every scenario uses: our own server, or an empty DB of the user's."""

    def __init__(self, url: str | None, workdir: Path):
        self.own = url is None
        self.token = secrets.token_hex(8)
        self.server: subprocess.Popen | None = None
        if self.own:
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self._start_server(workdir)
        else:
            self.url = url
            self.port = redis.Redis.from_url(url).connection_pool.connection_kwargs.get("port")
        self.client = redis.Redis.from_url(self.url)
        if not self.own:
            if self.client.dbsize():
                raise SystemExit(f"refusing to use {url}: the database is not empty")
            if not self.client.set(CLAIM_KEY, self.token, nx=True):
                raise SystemExit(f"refusing to use {url}: another benchmark claimed it")
        else:
            self.client.set(CLAIM_KEY, self.token)

    def _start_server(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server not found: install it (apt-get install redis-server) "
                             "or pass --redis URL of an empty database")
        self.server = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        STARTED.append(self.server)
        probe = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    raise SystemExit(f"redis-server did not start; see {workdir / 'redis.log'}")
                time.sleep(0.05)

    def reset(self) -> None:
        """Empty the DB between scenarios (keeps the claim)."""
        self.client.eval(RESET, 1, CLAIM_KEY, self.token)

    def commandstats(self) -> dict[str, int]:
        info = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}

    def version(self) -> str:
        return self.client.info("server")["redis_version"]

    def close(self) -> None:
        try:
            if self.own:
                if self.server and self.server.poll() is None:
                    try:
                        self.client.shutdown(nosave=True)
                    except redis.ConnectionError:
                        pass  # the server closes the connection as it exits
                    self.server.wait(timeout=10)
            else:
                self.client.eval(RESET, 1, CLAIM_KEY, self.token)
                self.client.delete(CLAIM_KEY)
        finally:
            self.client.close()


# -- processes ----------------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Sampler:
    """Samples a process's RSS every 100 ms on a daemon thread until stopped."""

    pid: int
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Sampler":
        threading.Thread(target=self._loop, name="bench-rss", daemon=True).start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = rss_kb(self.pid)
            if value:
                self.samples.append((time.monotonic(), value))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    @property
    def peak_kb(self) -> int:
        return max((v for _, v in self.samples), default=0)


class LoadSampler:
    """Samples the machine's 1-minute load average (``os.getloadavg``) every second on a daemon
    thread for the whole run; :meth:`peak` is the highest value since the last :meth:`mark`
    (each scenario marks its start), so every figure carries the load it was measured under."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.since = time.monotonic()

    def start(self) -> "LoadSampler":
        threading.Thread(target=self._loop, name="bench-load", daemon=True).start()
        return self

    def _loop(self) -> None:
        while True:
            self.samples.append((time.monotonic(), os.getloadavg()[0]))
            time.sleep(self.interval)

    def mark(self) -> None:
        self.since = time.monotonic()

    def peak(self) -> float:
        recent = [load for t, load in self.samples if t >= self.since]
        return round(max(recent, default=os.getloadavg()[0]), 2)


class KiqWorker:
    """One ``manage.py kiq_worker`` subprocess with the benchmark's environment.

    ``KIQ_LOG_LEVEL=WARNING``: at the default INFO the worker logs two lines per job, which on
    a no-op job costs more than the job; the peers run at WARNING too.
    """

    def __init__(self, url: str, logdir: Path, *args: str, env: dict[str, str] | None = None,
                 tag: str = "worker"):
        self.log = logdir / f"{tag}.log"
        full_env = {**os.environ, **worker_env(url), **(env or {})}
        argv = [sys.executable, str(ROOT / "manage.py"), "kiq_worker", *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env,
                                         stdout=out, stderr=subprocess.STDOUT)
        STARTED.append(self.proc)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def worker_env(url: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "KIQ_REDIS_URL": url,
        "KIQ_IMPORTS": "bench.kiq_bench_jobs",
        "KIQ_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


# -- the machine --------------------------------------------------------------------------------

def machine(target: RedisTarget) -> dict:
    import django

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M) \
        if Path("/proc/meminfo").exists() else None
    try:
        import hiredis  # noqa: F401
        hiredis_version = getattr(hiredis, "__version__", "yes")
    except ImportError:
        hiredis_version = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else platform.processor() or "?",
        "memory_gb": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": target.version(),
        "redis_py": redis.__version__,
        "hiredis": hiredis_version,
        "django": django.get_version(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
        "redis": "private redis-server (--save '' --appendonly no)" if target.own
                 else "user-supplied --redis",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "code": git_state(),
    }


def git_state() -> str:
    """The commit measured, and whether the working tree had changes on top of it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
    head = git("rev-parse", "--short", "HEAD").strip()
    if not head:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "django_kiq").strip()
    return f"{head}{' + uncommitted changes in django_kiq/' if dirty else ''}"

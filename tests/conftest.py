"""Fixtures shared by the whole suite: a Redis database of this run's own, and subprocess workers.

The run claims one Redis DB (15 down to 1) with ``SET kiq:test-claim <token> NX`` on a DB that is
empty, and between tests empties only that DB (FLUSHDB and the claim re-set in one Lua call).
Nothing else on the server is touched. Subprocess workers get the claimed URL through
``KIQ_REDIS_URL`` and short timings through the ``KIQ_*`` variables testproject/settings.py reads.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from django.test import override_settings

ROOT = Path(__file__).resolve().parent.parent
CLAIM_KEY = "kiq:test-claim"
CLAIM_TTL = 3 * 3600
BASE_URL = os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/0")
RESET = "redis.call('FLUSHDB'); return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"


def _url_for_db(db: int) -> str:
    base = BASE_URL.rsplit("/", 1)[0] if BASE_URL.count("/") > 2 else BASE_URL
    return f"{base}/{db}"


def _claim_db() -> tuple[str, str]:
    token = secrets.token_hex(8)
    for db in range(15, 0, -1):
        url = _url_for_db(db)
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_TTL):
                return url, token
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis DB (1-15) to claim at {BASE_URL}")


@pytest.fixture(scope="session")
def redis_url():
    url, token = _claim_db()
    client = redis.Redis.from_url(url)
    os.environ["KIQ_REDIS_URL"] = url
    override = override_settings(KIQ={"REDIS_URL": url, "POLL_INTERVAL_MAX": 0.2})
    override.enable()
    yield url
    override.disable()
    if client.get(CLAIM_KEY) == token.encode():
        client.eval(RESET, 1, CLAIM_KEY, token, 1)
        client.delete(CLAIM_KEY)
    client.close()


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    token = client.get(CLAIM_KEY)
    assert token, "lost the claim on the test Redis DB"
    client.eval(RESET, 1, CLAIM_KEY, token, CLAIM_TTL)
    from django_kiq import storage

    storage.reset_default()  # its cache of registered queues describes the emptied DB
    yield client
    client.close()


@pytest.fixture
def store(redis_client):
    from django_kiq import storage

    return storage.get_default()


@pytest.fixture(autouse=True)
def _clean_redis(request):
    """Every test starts with an empty claimed DB (only tests that use Redis pay for it)."""
    if "redis_client" not in request.fixturenames and "store" not in request.fixturenames:
        if request.node.get_closest_marker("redis"):
            request.getfixturevalue("redis_client")
    yield


class WorkerProcess:
    """A ``manage.py kiq_worker`` subprocess; output goes to a file the test can read."""

    def __init__(self, args, env, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "kiq_worker", *args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def worker_factory(redis_client, redis_url, tmp_path):
    """Start subprocess workers: ``worker_factory("-c", "5", env={"KIQ_PROCESS_TTL": "3"})``."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        full_env = {
            **os.environ, "KIQ_REDIS_URL": redis_url, "KIQ_IMPORTS": "tests.jobs",
            "KIQ_HEARTBEAT_INTERVAL": "0.5", "KIQ_PROCESS_TTL": "3", "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "testproject.settings", "KIQ_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        worker = WorkerProcess(list(args), full_env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@contextmanager
def private_redis(tmp_path, *args: str):
    """A ``redis-server`` of the test's own on a free loopback port (extra ``args`` appended,
    e.g. ``"--maxmemory", "4mb"``), stopped by its PID at the end: yields (url, client).
    For tests that change a server's configuration, which the shared one is not theirs to do."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path), *args],
                              stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        wait_for(lambda: pings(client))
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        server.kill()
        server.wait(timeout=10)


def fill_redis(client) -> None:
    """Fill a maxmemory/noeviction server up to its limit (call again at each poll: Redis frees
    buffers now and then)."""
    for batch in (500, 1):
        try:
            while True:
                client.rpush("filler", *["x" * 50] * batch)
        except redis.exceptions.OutOfMemoryError:
            pass


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02,
             message: str | Callable[[], str] = ""):
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` on timeout.

    ``message`` may be a callable (``worker.output``): it is called at the timeout, so the
    failure shows what a worker logged up to then, not before it started."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"condition not met within {timeout}s")
        time.sleep(interval)


# -- the database: SQLite by default, PostgreSQL when KIQ_DATABASE_URL says so -----------------

@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """On PostgreSQL, a test database of this run's own: ``test_<name>_<random>``, created and
    dropped by pytest-django, so parallel runs on one server never meet (nor drop each other's)."""
    from django.conf import settings

    token = secrets.token_hex(4)
    for db in settings.DATABASES.values():
        if db["ENGINE"] == "django.db.backends.postgresql":
            test = db.setdefault("TEST", {})
            test["NAME"] = f"{test.get('NAME') or 'test_' + db['NAME']}_{token}"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Point worker subprocesses at the test database; end their leftover sessions before
    pytest-django drops it (DROP DATABASE fails while anyone is connected)."""
    from django.db import connection

    url = os.environ.get("KIQ_DATABASE_URL")
    if not url or connection.vendor != "postgresql":
        yield
        return
    from testproject.dburl import with_name

    name = connection.settings_dict["NAME"]
    os.environ["KIQ_DATABASE_URL"] = with_name(url, name)
    yield
    os.environ["KIQ_DATABASE_URL"] = url
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", [name])


def run_as_worker(raw: bytes, queue: str = "default", identity: str = "test-run:1:abc"):
    """Run one job as a worker does, in this process: into an in-progress list, through a
    processor thread's steps, then its settle step (where a result record ends). Its outcome."""
    from django_kiq import storage
    from django_kiq.conf import get_settings
    from django_kiq.stats import Counters
    from django_kiq.worker.control import Control
    from django_kiq.worker.manager import Manager
    from django_kiq.worker.processor import Processor

    store = storage.get_default()
    store.client.lpush(store.keys.wip(identity), raw)
    processor = Processor(settings=get_settings(), counters=Counters(),
                          control=Control(store=store))
    outcome = processor.process(queue, raw, "kiq-t")
    assert store.settle(identity, [Manager._settle_entry(outcome)]) == [1]
    return outcome

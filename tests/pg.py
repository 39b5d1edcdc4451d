"""PostgreSQL helpers for the database tests: where the suite runs, who is connected, and a
private server a test can stop and restart.

The suite runs on PostgreSQL when ``KIQ_DATABASE_URL`` points at one (scripts/test.sh's second
pass); pytest-django then creates the run's own database (tests/conftest.py gives it a unique
name) and workers started by tests reach it through :func:`database_url`. A
:class:`PrivatePostgres` is a throw-away server in a temporary directory, for tests that must stop
the database under a worker without touching the machine's.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
import pytest
from django.db import connection

needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: KIQ_DATABASE_URL=postgres://... (scripts/test.sh's second pass)")


def database_url(**params: object) -> str:
    """A URL of the test database for worker subprocesses (testproject/dburl.py's format)."""
    s = connection.settings_dict
    auth = quote(s["USER"] or "") + (":" + quote(s["PASSWORD"]) if s["PASSWORD"] else "")
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return (f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/"
            f"{quote(s['NAME'])}" + (f"?{query}" if query else ""))


def conninfo(dbname: str | None = None) -> dict:
    s = connection.settings_dict
    return {"host": s["HOST"] or "127.0.0.1", "port": s["PORT"] or 5432,
            "user": s["USER"] or None, "password": s["PASSWORD"] or None,
            "dbname": dbname or s["NAME"]}


def sessions(application_name: str, **conn: object) -> list[int]:
    """Backend pids of the sessions named ``application_name`` (a worker's, by its URL)."""
    with psycopg.connect(**(conn or conninfo()), autocommit=True) as db:
        rows = db.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                          [application_name]).fetchall()
    return [pid for (pid,) in rows]


def terminate(application_name: str) -> int:
    """End every session named ``application_name`` on the server side."""
    with psycopg.connect(**conninfo(), autocommit=True) as db:
        rows = db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = %s", [application_name]).fetchall()
    return len(rows)


class SessionMonitor(threading.Thread):
    """Counts a worker's sessions every ``interval`` seconds, on one connection of its own."""

    def __init__(self, application_name: str, interval: float = 0.02):
        super().__init__(name="pg-session-monitor", daemon=True)
        self.application_name = application_name
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(**conninfo(), autocommit=True) as db:
            while not self._stop.is_set():
                (count,) = db.execute("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE application_name = %s",
                                      [self.application_name]).fetchone()
                self.peak = max(self.peak, count)
                self.samples += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> SessionMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binaries() -> Path | None:
    """The directory of initdb and postgres: Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A PostgreSQL server of one test: initdb into a temporary directory, trust auth for
    127.0.0.1, no fsync, on a free port. ``start``/``stop`` may be repeated (a restart keeps the
    data); ``close`` stops it by its pid and deletes the directory.

    initdb and postgres refuse to run as root, so under root both run as the ``postgres`` user
    (Debian's package creates it), in a directory that user owns.
    """

    def __init__(self) -> None:
        self.bin = server_binaries()
        if self.bin is None:
            pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kiq-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen | None = None
        self._as: dict = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self._log = open(self.dir / "server.log", "ab")  # opened by us: root may write it
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-locale", "-E", "UTF8", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([str(self.bin / program), *args], cwd=self.dir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._as)

    def conninfo(self, dbname: str = "postgres") -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "dbname": dbname}

    def url(self, dbname: str, **params: object) -> str:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        base = f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"
        return base + (f"?{query}" if query else "")

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "max_connections=50"],
            cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT, **self._as)
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(**self.conninfo(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"private PostgreSQL did not start: {self.log()}") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): sessions are ended, open transactions rolled back."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

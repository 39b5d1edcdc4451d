"""Workers on a real PostgreSQL (issue 17): connections per thread, ``CONN_MAX_AGE`` and
``CONN_HEALTH_CHECKS``, jobs that leave their connection in a bad state, ``select_for_update`` with
a follow-up enqueued inside the transaction, and a database restart under a running worker.

Workers are subprocesses on the run's test database (tests/pg.py's ``database_url``), each with an
``application_name`` of its own, so ``pg_stat_activity`` tells exactly which sessions are theirs.
These tests need PostgreSQL as the suite's database and skip on SQLite (scripts/test.sh runs them
in its PostgreSQL pass), except the restart test, which starts a private server of its own.
Numbers they measure are printed (``-s`` shows them); docs/worker.md quotes them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from django_kiq.api import Queue, RetrySet, Stats
from tests import jobs as test_jobs
from tests import pg
from tests.conftest import ROOT, wait_for
from tests.dbapp import jobs
from tests.dbapp.models import Counter, Note


def on_postgres(func):
    return pytest.mark.django_db(transaction=True)(pg.needs_postgres(func))


def start_worker(worker_factory, *args: str, url: str):
    return worker_factory(*args, env={"KIQ_DATABASE_URL": url, "KIQ_LOG_LEVEL": "WARNING"})


def app_name() -> str:
    return f"kiq-test-{secrets.token_hex(4)}"


def notes(token: str) -> int:
    return Note.objects.filter(token=token).count()


def wait_for_notes(worker, token: str, count: int, timeout: float) -> None:
    def done():
        assert worker.proc.poll() is None, worker.output()
        return notes(token) >= count
    try:
        wait_for(done, timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(f"{notes(token)} of {count} {token!r} jobs done within {timeout} s\n"
                             f"{worker.output()[-3000:]}") from None


# -- connections per thread ---------------------------------------------------------------------

@on_postgres
@pytest.mark.timeout(300)
def test_5000_orm_jobs_on_25_threads_hold_at_most_one_connection_per_thread(worker_factory):
    max_age = 5
    Counter.objects.create(name="orm", value=7)
    jobs.orm_note.enqueue_many([("bulk", i) for i in range(5000)])
    app = app_name()
    with pg.SessionMonitor(app) as monitor:
        started = time.monotonic()
        worker = start_worker(worker_factory, "-c", "25",
                              url=pg.database_url(application_name=app, conn_max_age=max_age))
        wait_for_notes(worker, "bulk", 5000, timeout=240)
        elapsed = time.monotonic() - started
        held = len(pg.sessions(app))
        # Idle threads close expired connections too: none outlives CONN_MAX_AGE (+ 1 s tick).
        wait_for(lambda: not pg.sessions(app), timeout=max_age + 3,
                 message=f"an idle worker kept connections past CONN_MAX_AGE={max_age}")
        idle_closed = time.monotonic() - started - elapsed

    rows = Note.objects.filter(token="bulk")
    assert sorted(rows.values_list("seq", flat=True)) == list(range(5000))
    assert set(rows.values_list("seen", flat=True)) == {7}
    threads = set(rows.values_list("thread", flat=True))
    assert 2 <= len(threads) <= 25 and all(t.startswith("kiq-processor-") for t in threads)
    assert 2 <= monitor.peak <= 25, monitor.peak
    # Reused: a thread opens a new connection only when its last one passed CONN_MAX_AGE.
    pids = set(rows.values_list("backend_pid", flat=True))
    assert len(pids) <= 25 * (1 + int(elapsed // max_age)), (len(pids), elapsed)
    print(f"\n5,000 ORM jobs on -c 25, CONN_MAX_AGE={max_age}: {elapsed:.1f} s from worker "
          f"start ({5000 / elapsed:.0f} jobs/s), peak {monitor.peak} sessions "
          f"({monitor.samples} samples), {len(pids)} connections opened, {held} held when the "
          f"jobs ran out, none {idle_closed:.1f} s later")


@on_postgres
@pytest.mark.parametrize("max_age", [0, 3])
def test_conn_max_age_closes_or_reuses_connections_as_for_requests(worker_factory, max_age):
    Counter.objects.create(name="orm", value=1)
    app = app_name()
    worker = start_worker(worker_factory, "-c", "4",
                          url=pg.database_url(application_name=app, conn_max_age=max_age))
    jobs.orm_note.enqueue_many([("reuse", i) for i in range(300)])
    started = time.monotonic()
    wait_for_notes(worker, "reuse", 300, timeout=60)
    finished = time.monotonic()
    open_now = set(pg.sessions(app))
    pids = set(Note.objects.filter(token="reuse").values_list("backend_pid", flat=True))

    if max_age == 0:
        # Closed at the end of each job, like at the end of each request: a new one per job.
        assert len(pids) > 250, len(pids)
        wait_for(lambda: not pg.sessions(app), timeout=2)
        return
    # Reused as for requests: a thread's connection lives until its CONN_MAX_AGE, then the end
    # of the job that finds it expired closes it and the next job opens another.
    elapsed = finished - started
    assert len(pids) <= 4 * (1 + int(elapsed // max_age)), (len(pids), elapsed)
    assert open_now and open_now <= pids and len(open_now) <= 4
    wait_for(lambda: not pg.sessions(app), timeout=max_age + 3,
             message=f"an idle worker kept connections past CONN_MAX_AGE={max_age}")
    print(f"\nCONN_MAX_AGE={max_age}: 300 jobs on -c 4 used {len(pids)} connections; idle "
          f"worker's connections closed {time.monotonic() - finished:.1f} s after the last job")


@on_postgres
@pytest.mark.parametrize("health_checks", [True, False])
def test_connections_broken_while_idle_as_conn_health_checks_says(worker_factory, health_checks):
    Counter.objects.create(name="orm", value=1)
    app = app_name()
    worker = start_worker(worker_factory, "-c", "3", url=pg.database_url(
        application_name=app, conn_max_age=600, conn_health_checks=health_checks))
    jobs.orm_note.enqueue_many([("before", i) for i in range(60)])
    wait_for_notes(worker, "before", 60, timeout=30)
    held = len(pg.sessions(app))
    assert 1 <= held <= 3
    assert pg.terminate(app) == held  # as a failover or an idle-session timeout would
    wait_for(lambda: not pg.sessions(app), timeout=5)

    jobs.orm_note_retrying.enqueue_many([("after", i) for i in range(30)])
    wait_for_notes(worker, "after", 30, timeout=30)
    # Failures reach stat:failed with the heartbeat; the last one is written as the worker stops.
    worker.send(signal.SIGTERM)
    assert worker.wait(20) == 0
    failed = Stats().failed
    if health_checks:
        # Django checks a reused connection before the job's first query and reconnects.
        assert failed == 0
    else:
        # The first query on each broken connection fails; the job retries on a new one.
        assert 1 <= failed <= held
    assert RetrySet().size() == 0  # each failure was retried: all 30 notes are written


# -- jobs that poison their connection --------------------------------------------------------

@on_postgres
def test_a_job_that_leaves_its_connection_broken_does_not_poison_the_next(worker_factory):
    """On one thread with persistent connections, each bad job is followed by a good one."""
    Counter.objects.create(name="orm", value=3)
    bad = [jobs.leave_atomic_open, jobs.error_mid_transaction, jobs.kill_own_connection,
           jobs.raw_begin]
    for i, job in enumerate(bad * 2):
        job.enqueue(f"bad-{i}")
        jobs.orm_note.enqueue("good", i)
    app = app_name()
    worker = start_worker(worker_factory, "-c", "1",
                          url=pg.database_url(application_name=app, conn_max_age=600))
    wait_for_notes(worker, "good", len(bad) * 2, timeout=30)
    wait_for(lambda: Stats().processed == len(bad) * 4, timeout=10)

    good = Note.objects.filter(token="good")
    assert sorted(good.values_list("seq", flat=True)) == list(range(len(bad) * 2))
    assert set(good.values_list("seen", flat=True)) == {3}
    # Nothing a bad job wrote in the transaction it left open was committed.
    assert not Note.objects.filter(seq=-1).exists()
    assert RetrySet().size() == 0 and Queue("default").size() == 0
    # The connection is still reused when nothing was wrong with it.
    assert len(set(good.values_list("backend_pid", flat=True))) < len(bad) * 2


# -- select_for_update and on-commit follow-ups ----------------------------------------------

@on_postgres
def test_follow_up_enqueued_in_a_locking_transaction_is_pushed_at_commit(worker_factory):
    Counter.objects.create(name="sfu", value=0)
    Counter.objects.create(name="rolled", value=0)
    worker = start_worker(worker_factory, "-c", "8", "-q", "default", "-q", "followups",
                          url=pg.database_url(application_name=app_name()))
    jobs.locked_increment.enqueue_many([("sfu", False, 0.01)] * 100)
    jobs.locked_increment.enqueue_many([("rolled", True, 0.01)] * 20)
    wait_for_notes(worker, "sfu:follow", 100, timeout=60)
    wait_for(lambda: Stats().processed == 220, timeout=20)

    # select_for_update serialised the increments: no update lost, each value taken once.
    assert Counter.objects.get(name="sfu").value == 100
    early = Note.objects.filter(token="sfu:early")
    assert sorted(early.values_list("seq", flat=True)) == list(range(1, 101))
    # Inside the transaction the follow-up was not in Redis yet ...
    assert set(early.values_list("seen", flat=True)) == {0}
    # ... and when it ran, the value it was given was committed (it never saw an older one).
    for value, seen in Note.objects.filter(token="sfu:follow").values_list("seq", "seen"):
        assert seen >= value
    # A rollback pushed no follow-up and left nothing behind.
    assert Counter.objects.get(name="rolled").value == 0
    assert not Note.objects.filter(token__startswith="rolled").exists()
    assert Queue("followups").size() == 0 and RetrySet().size() == 0


# -- a database restart under a running worker ---------------------------------------------

@pytest.mark.timeout(180)
def test_worker_rides_out_a_postgres_restart(worker_factory, redis_client):
    """A private server (not the machine's): stopped in fast mode mid-run, started again."""
    server = pg.PrivatePostgres()
    try:
        server.start()
        with psycopg.connect(**server.conninfo(), autocommit=True) as db:
            db.execute("CREATE DATABASE kiq")
        url = server.url("kiq", application_name="kiq-restart", conn_max_age=600)
        _migrate(url)
        with psycopg.connect(**server.conninfo("kiq"), autocommit=True) as db:
            db.execute("INSERT INTO dbapp_counter (name, value) VALUES ('orm', 5)")
        worker = start_worker(worker_factory, "-c", "5", url=url)

        feeder = _Feeder(total=400, per_second=80)
        feeder.start()
        time.sleep(1.5)
        server.stop()  # fast shutdown: sessions ended mid-job, new ones refused
        down = time.monotonic()
        time.sleep(2.0)
        failed_while_down = Stats().failed
        server.start()
        back = time.monotonic()
        feeder.join(timeout=30)

        def seqs():
            with psycopg.connect(**server.conninfo("kiq")) as db:
                rows = db.execute("SELECT seq FROM dbapp_note WHERE token = 'feed'").fetchall()
            return [seq for (seq,) in rows]
        wait_for(lambda: len(set(seqs())) >= 400, timeout=60, interval=0.5,
                 message=lambda: f"{len(set(seqs()))} of 400 done\n{worker.output()[-3000:]}")
        assert worker.proc.poll() is None, worker.output()
        assert set(seqs()) == set(range(400))
        assert failed_while_down >= 1  # jobs did hit the outage, and were retried
        wait_for(lambda: RetrySet().size() == 0, timeout=10)
        assert Stats().dead_size == 0

        # No thread died: all five run at once again.
        test_jobs.block_until_released.enqueue_many([(f"t{i}",) for i in range(5)])
        wait_for(lambda: len(redis_client.hgetall("test:started")) == 5, timeout=10,
                 message="fewer than 5 processor threads left")
        redis_client.set("test:release", 1)
        print(f"\nPostgreSQL down {back - down:.1f} s: {failed_while_down} job failures while "
              f"down, {Stats().failed} in all; {len(seqs())} runs for 400 jobs; worker pid "
              f"{worker.pid} never restarted")
    finally:
        server.close()


def _migrate(url: str) -> None:
    env = {**os.environ, "KIQ_DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "dbapp", "--skip-checks",
                    "-v", "0"], cwd=ROOT, env=env, check=True, timeout=60)


class _Feeder(threading.Thread):
    """Enqueues ``total`` jobs at ``per_second``, through the outage and after it."""

    def __init__(self, total: int, per_second: float):
        super().__init__(name="feeder", daemon=True)
        self.total = total
        self.interval = 1 / per_second

    def run(self) -> None:
        for i in range(self.total):
            jobs.orm_note_retrying.enqueue("feed", i)
            time.sleep(self.interval)

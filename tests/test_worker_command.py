"""``manage.py kiq_worker`` itself: starting while Redis is unreachable (issue 10 item 15).

Real worker subprocesses pointed at a free port with no Redis behind it; the waiting worker then
meets a private ``redis-server`` started on that port by the test (stopped by its PID after).
"""

from __future__ import annotations

import subprocess

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from tests import jobs
from tests.conftest import wait_for
from tests.test_checks import _free_port, _pings

UNREACHABLE = "cannot reach Redis at 127.0.0.1:"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_worker_waits_for_an_unreachable_redis_then_runs_jobs(worker_factory, redis_client,
                                                                redis_url, tmp_path):
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = worker_factory("-c", "1", env={"KIQ_REDIS_URL": url,
                                            "KIQ_TEST_LEDGER_URL": redis_url})
    wait_for(lambda: worker.output().count(UNREACHABLE) >= 2, timeout=30,
             message=lambda: f"no retry lines:\n{worker.output()}")
    out = worker.output()
    assert worker.proc.poll() is None, out
    assert "Traceback" not in out
    assert all(UNREACHABLE in line and "Retrying in" in line for line in _lines(out)), out

    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        private = redis.Redis(port=port)
        wait_for(lambda: _pings(private))
        with override_settings(KIQ={**settings.KIQ, "REDIS_URL": url}):
            jobs.record_in_ledger.enqueue("after-wait")
        wait_for(lambda: redis_client.scard("ledger:after-wait") == 1, timeout=30,
                 message=lambda: f"the job never ran:\n{worker.output()}")
        assert "Traceback" not in worker.output()
        assert private.scard("processes") == 1
        private.close()
    finally:
        worker.kill()  # before its Redis goes away
        server.terminate()
        server.wait(timeout=10)


def test_exit_on_redis_error_exits_with_one_line(worker_factory, redis_client):
    url = f"redis://127.0.0.1:{_free_port()}/0"
    worker = worker_factory("--exit-on-redis-error", env={"KIQ_REDIS_URL": url})
    assert worker.wait(timeout=30) == 1
    [line] = _lines(worker.output())
    assert line.startswith("CommandError: " + UNREACHABLE) and "Connection refused" in line


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_wait_quietly(worker_factory, redis_client, sig):
    import signal

    worker = worker_factory(env={"KIQ_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"})
    wait_for(lambda: UNREACHABLE in worker.output(), timeout=30, message=worker.output)
    worker.send(getattr(signal, sig))
    assert worker.wait(timeout=10) == 0
    assert "Traceback" not in worker.output()
    assert _lines(worker.output())[-1].endswith("stopped while waiting for Redis")

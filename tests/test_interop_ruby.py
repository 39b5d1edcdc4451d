"""Wire compatibility with the real Ruby Sidekiq (Debian's ruby-sidekiq 6.4.1), both directions.

Ruby's own client pushes a ``HardWorker`` job that our worker runs (registered with
``@job(name="HardWorker")`` in tests/jobs.py); Ruby's own API lists what django-kiq pushed and
sees our worker process.
"""

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests import jobs
from tests.conftest import wait_for

RUBY_DIR = Path(__file__).with_name("ruby")


def _ruby_has_sidekiq() -> bool:
    if not shutil.which("ruby"):
        return False
    return subprocess.run(["ruby", "-e", 'require "sidekiq"'], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _ruby_has_sidekiq(),
                                reason="Ruby Sidekiq missing: apt-get install ruby-sidekiq "
                                       "(scripts/test.sh installs it)")


def _ruby(script: str, *args: str, redis_url: str) -> str:
    done = subprocess.run(["ruby", str(RUBY_DIR / script), *args], capture_output=True,
                          text=True, env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_job_pushed_by_ruby_sidekiq_runs_on_kiq_worker(redis_client, redis_url, worker_factory):
    jid = _ruby("push_hardworker.rb", "bob", "5", redis_url=redis_url).strip()
    [raw] = redis_client.lrange("queue:default", 0, -1)
    pushed = json.loads(raw)
    assert pushed["class"] == "HardWorker" and pushed["jid"] == jid
    worker = worker_factory("-c", "2")
    wait_for(lambda: redis_client.llen("test:hardworker") == 1, timeout=20)
    assert redis_client.lrange("test:hardworker", 0, -1) == [b"bob:5"]
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


def test_job_pushed_by_django_kiq_is_listed_by_ruby_sidekiq(redis_client, redis_url):
    jid = jobs.record_kwargs.enqueue(7, b="x")
    hard_jid = jobs.hard_worker.enqueue("alice", 3)
    seen = json.loads(_ruby("inspect.rb", "default", redis_url=redis_url))
    assert seen["size"] == 2 and seen["stats_enqueued"] == 2
    by_jid = {j["jid"]: j for j in seen["jobs"]}
    assert by_jid[jid]["class"] == "tests.jobs.record_kwargs" and by_jid[jid]["args"] == [7]
    assert by_jid[hard_jid]["class"] == "HardWorker" and by_jid[hard_jid]["args"] == ["alice", 3]
    assert by_jid[jid]["enqueued_at"] > 0 and seen["latency"] >= 0


def test_ruby_sees_a_kiq_worker_process(redis_client, redis_url, worker_factory):
    worker = worker_factory("-c", "3", "-q", "default", "-q", "mail")
    wait_for(lambda: redis_client.scard("processes") == 1)
    seen = json.loads(_ruby("inspect.rb", "default", redis_url=redis_url))
    [process] = seen["processes"]
    assert process["concurrency"] == 3 and process["queues"] == ["default", "mail"]
    assert process["busy"] == 0
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0

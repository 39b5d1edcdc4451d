"""``kiq_worker --reload``: a changed job module restarts the worker without losing a job.

The jobs live in a throwaway package (``tmp_path`` on PYTHONPATH, named in KIQ_IMPORTS), so the
test can rewrite the module the worker imported, as a developer saving a file does.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

from django_kiq import api, payload
from django_kiq.worker.processor import unknown_job_message
from tests.conftest import wait_for

JOBS = textwrap.dedent('''
    import time

    from django_kiq import job, storage


    @job
    def slow(token, seconds):
        client = storage.get_default().client
        client.hincrby("test:started", token, 1)
        time.sleep(seconds)
        client.hincrby("test:runs", token, 1)
''')
ADDED = textwrap.dedent('''

    @job
    def added(token):
        storage.get_default().client.hincrby("test:runs", token, 1)
''')


def push(store, name: str, *args) -> None:
    job = payload.build(name=name, args=args, kwargs={}, queue="default", now=time.time())
    store.push([("default", payload.encode(job))])


def count(redis_client, key: str, token: str) -> int:
    return int(redis_client.hget(key, token) or 0)


def test_a_changed_module_restarts_the_worker_gracefully(worker_factory, store, redis_client,
                                                          tmp_path):
    package = tmp_path / "reloadjobs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(JOBS)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    worker = worker_factory("--reload", "-c", "2",
                            env={"KIQ_IMPORTS": "reloadjobs.jobs", "PYTHONPATH": path})
    try:
        first = wait_for(api.ProcessSet().list, timeout=20, message="no worker registered")[0]
        assert first.pid != worker.pid  # the worker is the supervisor's child
        wait_for(lambda: "watching for file changes" in worker.output(), timeout=10)
        time.sleep(1.5)  # the reloader's first pass records the files' times
        push(store, "reloadjobs.jobs.slow", "s1", 3)
        wait_for(lambda: count(redis_client, "test:started", "s1") == 1, timeout=10)
        (package / "jobs.py").write_text(JOBS + ADDED)
        wait_for(lambda: "changed; stopping gracefully" in worker.output(), timeout=5,
                 message=lambda: f"the change was not noticed:\n{worker.output()}")
        second = wait_for(lambda: [p for p in api.ProcessSet().list()
                                   if p.identity != first.identity], timeout=20,
                          message="no new worker after the change")[0]
        assert count(redis_client, "test:runs", "s1") == 1  # finished before the restart
        push(store, "reloadjobs.jobs.added", "a1")  # a job the first worker did not know
        wait_for(lambda: count(redis_client, "test:runs", "a1") == 1, timeout=10,
                 message="the new job did not run on the restarted worker")
        assert [p.identity for p in api.ProcessSet().list()] == [second.identity]
        assert count(redis_client, "test:started", "s1") == 1  # ran exactly once
        assert redis_client.zcard("retry") == 0 and redis_client.zcard("dead") == 0
    finally:
        worker.send(signal.SIGTERM)  # forwarded to the child as one graceful TERM
    assert worker.wait(timeout=30) == 0
    assert api.ProcessSet().list() == []
    assert "stopped (0 job(s) pushed back)" in worker.output()


def test_unknown_job_message_points_at_reload():
    message = unknown_job_message("app.jobs.new")
    assert "restart the worker, or run it with `kiq_worker --reload`" in message
    assert "future" not in message

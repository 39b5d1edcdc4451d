"""Test modes for your own test suite: run jobs inline at enqueue, or collect them and drain them.

``KIQ["TESTING"] = "inline"`` runs each job in the enqueueing thread; ``"fake"`` collects job
hashes in the module-level list :data:`jobs` for assertions and :func:`drain`. In both modes
client middleware and the size check run as in production, the job hash makes the JSON round
trip it would make through Redis, ``KIQ["ENQUEUE_ON_COMMIT"]`` defers delivery to the commit,
and no Redis command is sent: ``client.submit_payloads`` (the one enqueue pipeline) hands the jobs
to this module's writer for the mode instead of the Redis writer.

A job run here (inline, or by ``drain``) goes through ``KIQ["SERVER_MIDDLEWARE"]`` and is called
exactly as a worker calls it (same :class:`JobContext`, same call), but without the worker's
built-in logging, stats and retry middleware: its exception reaches the caller instead of
becoming a retry, and error and death handlers do not run.

Threads: whichever thread enqueues or drains; :data:`jobs` is guarded by a lock. Lifecycle:
imported on first use; :data:`jobs` lives as long as the process, so clear it between tests
(the ``fake()`` context manager and the ``kiq_fake`` fixture do). The pytest fixtures exist only
when pytest is importable; use them with ``pytest_plugins = ["django_kiq.testing"]``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


from . import client, payload, registry
from .conf import KiqSettings, get_settings
from .middleware import build_chain
from .stats import Counters
from .worker.processor import JobContext, Processor

MODES = ("inline", "fake")

#: Every job hash collected in fake mode, oldest first, as Redis would hold it.
jobs: list[dict[str, Any]] = []
_lock = threading.Lock()
_server_chains: dict[tuple[str, ...], Callable] = {}


# -- the writers the client's pipeline calls in these modes ---------------------------------

class _ModeWriter:
    """Last step of ``client.submit_payloads`` in a test mode (middleware, the size check and
    on-commit deferral have run): run each job now (inline) or collect it (fake). No Redis."""

    checks_size = False  # the pipeline checks sizes before calling us

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, accepted: list[dict[str, Any]], settings: KiqSettings) -> None:
        now = time.time()
        for job in accepted:
            if self.mode == "inline":
                _run(payload.ready_for_queue(job, now), settings)
                continue
            if job.get("at") is None or job["at"] <= now:
                job = payload.ready_for_queue(job, now)
            # What Redis would hold: a JSON round trip, so assertions see lists, not tuples.
            stored = payload.decode(payload.encode(job))
            with _lock:
                jobs.append(stored)


for _mode_name in MODES:
    client.register_test_writer(_mode_name, _ModeWriter(_mode_name))


# -- running one job -------------------------------------------------------------------------

def _run(job: dict[str, Any], settings: KiqSettings) -> Any:
    """Run one job hash now, through server middleware; its exception propagates.

    The hash is encoded and decoded first, so the job receives what a worker would receive.
    """
    raw = payload.encode(job)
    decoded = payload.decode(raw)
    ctx = JobContext(raw=raw, queue=str(decoded.get("queue") or "default"), job=decoded,
                     definition=registry.get(decoded["class"]),
                     thread=threading.current_thread().name)
    return _server_chain(settings)(ctx)


def _server_chain(settings: KiqSettings) -> Callable:
    """Built once per middleware list, as a worker builds its chain once per process."""
    key = settings.server_middleware
    chain = _server_chains.get(key)
    if chain is None:
        # The worker's own innermost call (UnknownJob, kwargs, async jobs), without its built-in
        # log/stats/retry middleware, whose job is to turn the exception into an outcome.
        processor = Processor(settings=settings, counters=Counters())
        with _lock:
            chain = _server_chains[key] = build_chain(key, processor._call)
    return chain


# -- fake mode: inspect, drain, clear --------------------------------------------------------

def _name_of(job_or_name: Any) -> str:
    if isinstance(job_or_name, str):
        return job_or_name
    name = getattr(job_or_name, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"pass a @job or a job name, not {job_or_name!r}")
    return name


def jobs_for(job_or_name: Any) -> list[dict[str, Any]]:
    """The collected hashes of one job (a ``@job`` or its registered name), oldest first."""
    name = _name_of(job_or_name)
    with _lock:
        return [job for job in jobs if job["class"] == name]


def clear() -> None:
    """Forget every collected job."""
    with _lock:
        jobs.clear()


def _take(name: str | None, include_scheduled: bool) -> dict[str, Any] | None:
    with _lock:
        for i, job in enumerate(jobs):
            if name is not None and job["class"] != name:
                continue
            if not include_scheduled and "at" in job:
                continue
            return jobs.pop(i)
    return None


def drain(job_or_name: Any = None, *, include_scheduled: bool = True) -> int:
    """Run collected jobs oldest first, including those they enqueue; returns how many ran.

    Scheduled jobs (``enqueue_in``/``enqueue_at``) run too, whatever their time, unless
    ``include_scheduled=False``. A job is removed before it runs: if it raises, the exception
    propagates and the jobs after it stay collected. ``job_or_name`` limits the drain to one job.
    """
    name = None if job_or_name is None else _name_of(job_or_name)
    settings = get_settings()
    count = 0
    while (job := _take(name, include_scheduled)) is not None:
        if "at" in job:
            job = payload.ready_for_queue(job, time.time())
        count += 1
        _run(job, settings)
    return count


class FakeQueue:
    """What ``fake()`` and the ``kiq_fake`` fixture give you: this module's fake-mode verbs."""

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return jobs

    def jobs_for(self, job_or_name: Any) -> list[dict[str, Any]]:
        return jobs_for(job_or_name)

    def drain(self, job_or_name: Any = None, *, include_scheduled: bool = True) -> int:
        return drain(job_or_name, include_scheduled=include_scheduled)

    def clear(self) -> None:
        clear()


# -- switching the mode for a block ----------------------------------------------------------

@contextmanager
def _mode(mode: str) -> Iterator[None]:
    # override_settings sends setting_changed, which drops the cached settings object, so the
    # next enqueue sees the new mode. It is process-wide, like any settings override.
    from django.conf import settings
    from django.test import override_settings

    current = getattr(settings, "KIQ", None) or {}
    with override_settings(KIQ={**current, "TESTING": mode}):
        yield


@contextmanager
def fake() -> Iterator[FakeQueue]:
    """Collect jobs for the block; starts from an empty list, keeps it after the block."""
    clear()
    with _mode("fake"):
        yield FakeQueue()


@contextmanager
def inline() -> Iterator[None]:
    """Run jobs at enqueue for the block."""
    with _mode("inline"):
        yield


# -- pytest fixtures (pytest_plugins = ["django_kiq.testing"]) -------------------------------

try:
    import pytest
except ImportError:  # pytest is optional: the fixtures exist only where it is installed
    pytest = None  # type: ignore[assignment]  # a module, or None without it

if pytest is not None:

    @pytest.fixture
    def kiq_fake() -> Iterator[FakeQueue]:
        """Fake mode for one test: collected jobs start empty and are cleared afterwards."""
        with fake() as queue:
            yield queue
        clear()

    @pytest.fixture
    def kiq_inline() -> Iterator[None]:
        """Inline mode for one test: jobs run at enqueue."""
        with inline():
            yield

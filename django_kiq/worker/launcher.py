"""The worker process: identity, signals, heartbeat, orphan recovery, start and stop.

Runs in the main thread of ``manage.py kiq_worker``. It owns a :class:`Manager` (the processor
threads and the fetcher), a :class:`Poller` (the ``kiq-scheduler`` thread) and the
``kiq-heartbeat`` thread, which every ``HEARTBEAT_INTERVAL`` writes the process hash and the work
hash, flushes counters, obeys remote signals and recovers the jobs of processes whose heartbeat
expired; between beats it rewrites the work hash (what the Busy page shows) every
``WORK_REFRESH`` seconds when the set of running jobs changed, so that page is never more than
about a second behind, at one write per refresh however many jobs start. Signals: TERM/INT stop
gracefully (a second INT stops at once), TSTP quiets, TTIN logs every thread's stack. Signal
handlers only set flags; the main loop acts on them, so no exception raised on a processor
thread (a job's ``SystemExit``) is ever taken for a shutdown. Nothing escapes the heartbeat or
start-up: Redis outages are retried with back-off, anything else is logged and retried.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from .. import __version__, limits
from ..conf import KiqSettings
from ..stats import Counters, summarize
from ..storage import TRANSIENT_ERRORS, Heartbeat, Storage
from .fetcher import Fetcher, QueueOrder, recover_orphans
from .loop import Backoff
from .control import Control
from .aio import runner_for
from .manager import Manager
from .processor import Processor
from .scheduler import Poller

logger = logging.getLogger("django_kiq.worker")
WORK_REFRESH = 0.5  # seconds between checks for a changed set of running jobs


def make_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def rss_kb() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


class Component(Protocol):
    """What an ``extra_threads`` factory returns (the cron ticker): started after the launcher's
    own threads, stopped before it waits for running jobs."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Launcher:
    def __init__(self, *, settings: KiqSettings, store: Storage, queues: list[tuple[str, int]],
                 strict: bool, concurrency: int, timeout: float, tag: str = "",
                 extra_threads: list[Callable[["Launcher"], Component]] | None = None,
                 identity: str | None = None, supervisor: dict[str, Any] | None = None,
                 report: Callable[[dict[str, Any]], None] | None = None):
        # A child of ``kiq_worker --processes N`` (worker/supervisor.py) gets its identity from
        # the parent, shows the parent in its process hash (``supervisor``: the Busy page groups
        # by it) and reports its state to the parent at each beat (``report``).
        self.settings = settings
        self.store = store
        self.queues = queues
        self.concurrency = concurrency
        self.timeout = timeout
        self.tag = tag
        self.identity = identity or make_identity()
        self.supervisor = supervisor
        self.report = report
        self.jobs_done = 0  # jobs finished since the start (the supervisor's --max-jobs)
        limits.bind_process(self.identity)  # limiter leases name it, for orphan recovery
        self.started_at = time.time()
        self.counters = Counters()
        order = QueueOrder(queues, strict)
        self.control = Control(store=store, on_change=lambda: self.manager.touch())
        processor = Processor(settings=settings, counters=self.counters, control=self.control,
                              stopping=lambda: self.manager.stopping())
        self.manager = Manager(
            store=store, fetcher=Fetcher(store.dedicated(), self.identity, order),
            processor=processor, concurrency=concurrency, queues=[name for name, _ in queues],
            poison_limit=settings.poison_limit,
            async_runner=runner_for(settings, processor=processor, control=self.control))
        self.poller = Poller(store=store, identity=self.identity, settings=settings)
        # Factories get the launcher (identity, store) and return objects with start()/stop().
        self.extra = [factory(self) for factory in (extra_threads or [])]
        self._stop_requested = threading.Event()
        self._hard_stop = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._dump_requested = threading.Event()
        self._interrupts = 0
        self._work_written = -1  # the manager's change counter at the last work-hash write

    # -- the process ---------------------------------------------------------------------------

    def info(self) -> dict:
        return {
            "hostname": socket.gethostname(), "started_at": self.started_at, "pid": os.getpid(),
            "tag": self.tag, "concurrency": self.concurrency,
            "queues": [name for name, _ in self.queues],
            "weights": [{name: weight for name, weight in self.queues}], "labels": [],
            "identity": self.identity, "version": __version__, "runtime": "django-kiq",
            **({"supervisor": self.supervisor} if self.supervisor else {}),
        }

    def run(self) -> int:
        self._install_signals()
        logger.info("django-kiq %s starting: identity=%s redis=%s queues=%s concurrency=%d",
                    __version__, self.identity, self.store.describe(),
                    ",".join(f"{n}:{w}" for n, w in self.queues), self.concurrency)
        self._register()
        self.control.start()
        self.manager.start()
        self.poller.start()
        for component in self.extra:
            component.start()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="kiq-heartbeat",
                                     daemon=True)
        heartbeat.start()
        while not self._stop_requested.wait(timeout=0.2):
            if self._dump_requested.is_set():
                self._dump_requested.clear()
                self.dump_threads()
        self._shutdown(heartbeat)
        return 0

    def _register(self) -> None:
        """Announce ourselves before the first fetch; wait for Redis if it is down.

        Registration must succeed before the first fetch (it is what lets another process
        recover our jobs), so any error is retried. Recovering dead processes' jobs is only a
        head start on the heartbeat's next pass: its failure is logged, not fatal.
        """
        backoff = Backoff("startup", self._stop_requested)
        while not self._stop_requested.is_set():
            try:
                self.store.register(self.identity, json.dumps(self.info()))
                self._beat()
                backoff.ok()
                break
            except TRANSIENT_ERRORS as exc:
                backoff.failed(exc)
            except Exception as exc:  # noqa: BLE001 - log it and keep trying, never exit
                logger.exception("startup: could not register this process; retrying")
                backoff.failed(exc)
        if not self._stop_requested.is_set():
            self._recover_orphans()

    def _recover_orphans(self) -> None:
        try:
            recover_orphans(self.store, poison_limit=self.settings.poison_limit)
        except TRANSIENT_ERRORS as exc:
            logger.warning("recovering dead processes' jobs: Redis unavailable (%s); the next "
                           "heartbeat tries again", exc)
        except Exception:  # noqa: BLE001 - the next heartbeat tries again
            logger.exception("recovering dead processes' jobs failed; the next heartbeat tries "
                             "again")

    def _shutdown(self, heartbeat: threading.Thread) -> None:
        hard = self._hard_stop.is_set()
        deadline = time.monotonic() + (0 if hard else self.timeout)
        logger.info("stopping: waiting up to %.1fs for %d running job(s)",
                    max(0.0, deadline - time.monotonic()), self.manager.busy())
        self.poller.stop()
        for component in self.extra:
            component.stop()
        # A second INT while waiting shortens the deadline.
        watcher = threading.Thread(target=self._watch_hard_stop, daemon=True)
        watcher.start()
        left = self.manager.stop(deadline)
        self.control.stop()
        for queue, raw, _, _ in left:
            logger.warning("job cut off by the shutdown, pushed back to the head of %s (or to "
                           "dead after POISON_LIMIT such cut-offs and deaths): %.200s", queue, raw)
        self._heartbeat_stop.set()
        heartbeat.join(timeout=5)
        self._final_beat()
        logger.info("stopped (%d job(s) pushed back)", len(left))

    def _watch_hard_stop(self) -> None:
        self._hard_stop.wait()
        self.manager.hard_deadline()

    def _final_beat(self) -> None:
        try:
            self._beat()  # the last counters
            left = self.store.unregister(self.identity)
            if left:
                logger.error("%d job(s) could not be given back; another worker will recover "
                             "them after PROCESS_TTL", left)
        except Exception as exc:  # noqa: BLE001 - exiting anyway: say what it means
            logger.error("could not unregister (%s): another worker will recover any job left "
                         "after PROCESS_TTL", exc)

    # -- signals -------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self._on_interrupt())
        signal.signal(signal.SIGTSTP, lambda *_: self.quiet())
        signal.signal(signal.SIGTTIN, lambda *_: self._dump_requested.set())

    def _on_interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            logger.warning("second interrupt: stopping now, pushing running jobs back")
            self._hard_stop.set()
        self.request_stop()

    def request_stop(self) -> None:
        self._stop_requested.set()

    def quiet(self) -> None:
        logger.info("quiet: finishing running jobs, fetching no more")
        threading.Thread(target=self.manager.quiet, name="kiq-quiet", daemon=True).start()

    def dump_threads(self) -> None:
        frames = sys._current_frames()
        for thread in threading.enumerate():
            frame = frames.get(thread.ident) if thread.ident is not None else None
            stack = "".join(traceback.format_stack(frame)) if frame else "(no frame)\n"
            logger.warning("thread %s:\n%s", thread.name, stack)

    # -- heartbeat -----------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        backoff = Backoff("heartbeat", self._heartbeat_stop)
        interval = self.settings.heartbeat_interval
        next_beat = time.monotonic() + interval
        while not self._heartbeat_stop.wait(
                min(WORK_REFRESH, max(0.0, next_beat - time.monotonic()))):
            if time.monotonic() < next_beat:
                self._refresh_work()
                continue
            next_beat = time.monotonic() + interval
            try:
                for name in self._beat():
                    self._obey(name)
                backoff.ok()
            except TRANSIENT_ERRORS as exc:
                backoff.failed(exc)
                continue
            except Exception:  # noqa: BLE001 - the heartbeat thread must outlive any error
                logger.exception("heartbeat failed; will try again")
            self._report()
            self._recover_orphans()

    def _report(self) -> None:
        """Tell the supervisor, if any, what its recycling rules need: jobs finished since the
        start, resident memory, and how many running jobs are stuck past their time limit."""
        if self.report is None:
            return
        try:
            self.report({"jobs": self.jobs_done, "rss_kb": rss_kb(),
                         "stuck": len(self.control.stuck())})
        except Exception:  # noqa: BLE001 - a gone parent: the child notices it on its own
            logger.debug("could not report to the supervisor", exc_info=True)

    def beat_now(self) -> None:
        """Write the heartbeat and flush the counters now (a child leaving without the
        shutdown: worker/supervisor.py)."""
        self._beat()

    def _refresh_work(self) -> None:
        """Rewrite the work hash if the running jobs changed since it was last written."""
        changes, running = self.manager.running_state()
        if changes == self._work_written:
            return
        try:
            self.store.write_work(self.identity, self._work(running), busy=len(running),
                                  ttl=self.settings.process_ttl)
            self._work_written = changes
        except Exception as exc:  # noqa: BLE001 - the next refresh or beat writes it again
            logger.debug("work refresh failed: %s", exc)

    def _obey(self, name: str) -> None:
        if name == "TSTP":
            self.quiet()
        elif name == "TERM":
            self.request_stop()
        elif name == "TTIN":
            self._dump_requested.set()

    def _beat(self) -> list[str]:
        processed, failed, timings, failures = self.counters.drain()
        changes, running = self.manager.running_state()
        beat = Heartbeat(identity=self.identity, info=json.dumps(self.info()),
                         busy=len(running), quiet=self.manager.quiet_flag, rss_kb=rss_kb(),
                         rtt_us=self._rtt(), work=self._work(running),
                         ttl=self.settings.process_ttl, processed=processed, failed=failed)
        try:
            signals = self.store.heartbeat(beat, metrics=summarize(timings, failures))
        except Exception:
            self.counters.restore(processed, failed, timings, failures)
            raise
        self.jobs_done += processed
        self._work_written = changes
        return signals

    def _work(self, running: dict[str, tuple[str, bytes, float, int]]) -> dict[str, str]:
        stuck = self.control.stuck()
        progress = self.control.progress()  # current_job().progress(): docs/workflows.md
        work = {}
        for thread, (queue, raw, started, _) in running.items():
            entry = {"queue": queue, "payload": raw.decode("utf-8", "replace"), "run_at": started}
            if thread in stuck:  # past its time limit, blocked where it cannot be interrupted
                entry["stuck"] = True
            if thread in progress:
                entry["progress"], entry["progress_message"] = progress[thread]
            work[thread] = json.dumps(entry)
        return work

    def _rtt(self) -> int:
        try:
            return self.store.round_trip_us()
        except TRANSIENT_ERRORS:
            return 0

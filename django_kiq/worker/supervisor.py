"""``kiq_worker --processes N``: one parent process that forks N workers and keeps them running.

The parent is the command as started. It has loaded Django and the job modules; it closes its
database and Redis connections and forks each child (``os.fork``), so the children share that
memory copy-on-write. Each child is a full worker (a :class:`~.launcher.Launcher` built by the
command) with an identity the parent chose, its own connections, heartbeat and in-progress list;
its process hash names the parent (the Busy page groups children under it).

The parent runs only its main thread (forking a threaded process is unsafe), in a loop of
``TICK`` seconds: it reads the children's reports from their pipes, reaps the dead with
``waitpid`` and replaces them, and obeys its signals, which it forwards to every child:
TERM/INT graceful stop (it exits 0 when every child stopped cleanly), TSTP quiet, TTIN a stack
dump. It sends no Redis command while all is well.

- **A child dies** (killed, crashed): the parent knows at once, so it recovers the child's
  in-progress jobs at once (``fetcher.recover_process``) instead of waiting ``PROCESS_TTL`` for
  the heartbeat to expire, and starts a new child; after deaths within ``MIN_UPTIME`` of the
  start, with a growing pause (:func:`restart_delay`).
- **Recycling** (``--max-rss``, ``--max-jobs``, a job stuck past its time limit): one child at a
  time, and the next only once its replacement is running, so N-1 children always fetch. A
  child over a limit gets TERM: a graceful stop (running jobs finish within ``--timeout``). A
  child with a stuck job gets USR1: it fetches no more, lets its other jobs finish, reports the
  stuck jobs and exits (``EXIT_LEFT_STUCK``) without giving them back; once ``waitpid`` says it
  is gone, so the stuck code cannot run on, the parent fails each as ``JobTimeout`` through its
  retry policy (``Processor.fail``). So a stuck job is neither lost nor run twice at once.
- **The parent dies** (even SIGKILL): each child gets TERM from the kernel (``PR_SET_PDEATHSIG``
  on Linux) and, everywhere, sees its parent pid change within a second: a graceful stop
  (worker/child.py, the child's side: its report pipe, the parent watch, the stuck-job exit).

Children run in a process group of their own, so a terminal's Ctrl-C reaches them once, through
the parent, and a second Ctrl-C still stops them at once.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import secrets
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..conf import KiqSettings
from ..exceptions import JobTimeout
from ..stats import Counters
from ..storage import Storage
from .child import EXIT_LEFT_STUCK, ChildSide, jid_of
from .fetcher import recover_process
from .manager import Manager
from .processor import Processor

logger = logging.getLogger("django_kiq.worker")
TICK = 0.1
MIN_UPTIME = 10.0  # a child that dies sooner counts as dying at start (restart_delay)
MAX_RESTART_DELAY = 30.0
KILL_GRACE = 15.0  # seconds past --timeout before a child that does not stop gets SIGKILL
SWEEP_AFTER = 2.0  # a second recovery pass for a dead child's last in-flight command


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_processes(value: object) -> int:
    """``--processes`` / ``KIQ["PROCESSES"]``: a count >= 1, or "auto" (the usable cores)."""
    if value == "auto":
        return usable_cores()
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if type(value) is not int or value < 1:
        raise ValueError(f"processes must be a whole number >= 1 or 'auto', not {value!r}")
    return value


def restart_delay(early_deaths: int) -> float:
    """Seconds before restarting a child after ``early_deaths`` deaths in a row within
    MIN_UPTIME of their start: 0 for the first, then 0.5, 1, 2... up to MAX_RESTART_DELAY."""
    if early_deaths <= 1:
        return 0.0
    return min(MAX_RESTART_DELAY, 0.5 * 2 ** (early_deaths - 2))


@dataclass(frozen=True, slots=True, kw_only=True)
class Recycle:
    """When a child is replaced: resident memory over ``max_rss_mb``, ``max_jobs`` finished."""

    max_rss_mb: int | None = None
    max_jobs: int | None = None

    def __bool__(self) -> bool:
        return self.max_rss_mb is not None or self.max_jobs is not None

    def reason(self, report: dict[str, Any]) -> str | None:
        """Why a child whose last report is ``report`` must go, or None."""
        if report.get("stuck"):
            return "a job is stuck past its time limit"
        jobs, rss = report.get("jobs", 0), report.get("rss_kb", 0)
        if self.max_jobs is not None and jobs >= self.max_jobs:
            return f"{jobs} jobs done (--max-jobs {self.max_jobs})"
        if self.max_rss_mb is not None and rss >= self.max_rss_mb * 1024:
            return f"{rss // 1024} MB resident (--max-rss {self.max_rss_mb})"
        return None


@dataclass(slots=True, kw_only=True)
class Child:
    """The parent's record of one child process (its slot ``index`` outlives it)."""

    index: int
    pid: int
    identity: str
    reader: int  # the read end of the child's report pipe
    started: float = field(default_factory=time.monotonic)
    buffer: bytes = b""
    report: dict[str, Any] = field(default_factory=dict)  # its last report; {} until running
    retiring: str = ""  # why it was asked to leave
    kill_at: float | None = None  # monotonic time of the SIGKILL if it has not left by then
    left_stuck: dict[str, str] = field(default_factory=dict)  # jid -> queue, left to the parent


class Supervisor:
    """The parent: ``run()`` starts ``processes`` children, each running ``run_child`` (which
    builds and runs its Launcher), keeps them running until TERM/INT and returns the exit
    status. Used only by ``kiq_worker`` when more than one process or a recycling limit is
    asked for."""

    def __init__(self, *, processes: int, run_child: Callable[[ChildSide], int],
                 store: Storage, settings: KiqSettings, timeout: float,
                 recycle: Recycle = Recycle()):
        self.processes = processes
        self.run_child = run_child  # builds and runs the child's Launcher; returns its status
        self.store = store
        self.settings = settings
        self.timeout = timeout
        self.recycle = recycle
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self.children: dict[int, Child] = {}  # pid -> child
        self._restart_at: dict[int, float] = {}  # slot index -> monotonic time to start it
        self._early_deaths: dict[int, int] = {}  # slot index -> deaths at start in a row
        self._sweeps: list[tuple[float, str]] = []
        self._signals: list[int] = []
        self._stopping = False
        self._quiet = False  # TSTP: no child is started or recycled any more
        self._clean = True

    # -- the parent's loop ---------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN):
            signal.signal(sig, lambda signum, _: self._signals.append(signum))
        logger.info("supervisor %s starting %d worker processes", self.identity,
                    self.processes)
        gc.freeze()  # objects loaded so far stay out of the collector: pages stay shared
        for index in range(self.processes):
            self._start(index)
        while self.children or not self._stopping:
            self._read_reports(TICK)
            self._obey_signals()
            self._reap()
            now = time.monotonic()
            if not self._stopping and not self._quiet:
                for index, at in list(self._restart_at.items()):
                    if now >= at:
                        del self._restart_at[index]
                        self._start(index)
                self._maybe_recycle()
            self._kill_overdue(now)
            self._sweep(now)
        logger.info("supervisor %s stopped (%s)", self.identity,
                    "every worker stopped cleanly" if self._clean else "not cleanly")
        return 0 if self._clean else 1

    def _fork(self) -> int:
        """``os.fork()``, the child inheriting no connection of ours and no buffered output."""
        self.store.disconnect()
        from django.db import connections

        connections.close_all()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        return os.fork()

    def _start(self, index: int) -> None:
        token = secrets.token_hex(6)
        reader, writer = os.pipe()
        pid = self._fork()
        if pid == 0:
            os.close(reader)
            self._child(index, token, writer)
        os.close(writer)
        os.set_blocking(reader, False)
        child = Child(index=index, pid=pid, reader=reader,
                      identity=f"{socket.gethostname()}:{pid}:{token}")
        self.children[pid] = child
        logger.info("worker %d started: pid %d, identity %s", index, pid, child.identity)

    def _read_reports(self, timeout: float) -> None:
        readers = {child.reader: child for child in self.children.values()}
        ready, _, _ = select.select(list(readers), [], [], timeout)
        for fd in ready:
            self._drain(readers[fd])

    def _drain(self, child: Child) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(child.reader, 65536):
                child.buffer += chunk
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                left = message.pop("left_stuck", None)
                if isinstance(left, dict):
                    child.left_stuck = {str(k): str(v) for k, v in left.items()}
                # Counts only: a value of another type never reaches the recycling rules.
                child.report.update({k: v for k, v in message.items() if type(v) is int})

    def _obey_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self._stopping:
                    logger.info("stopping: every worker stops gracefully")
                    self._stopping = True
                    self._restart_at.clear()
                    deadline = time.monotonic() + self.timeout + KILL_GRACE
                    for child in self.children.values():
                        child.kill_at = min(child.kill_at or deadline, deadline)
            elif signum == signal.SIGTSTP:
                self._quiet = True
                logger.info("quiet: every worker finishes its running jobs and fetches no more")
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        for pid, child in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            del self.children[pid]
            self._drain(child)  # what it wrote before it went (left_stuck)
            os.close(child.reader)
            self._buried(child, status)

    def _buried(self, child: Child, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        # Exit 0 unasked: a Stop from the Busy page. The supervisor keeps N workers: replaced.
        expected = self._stopping or child.retiring or code in (0, EXIT_LEFT_STUCK)
        if self._stopping and code != 0:
            self._clean = False
        (logger.info if expected else logger.error)(
            "worker %d (pid %d, %s) ended: %s%s", child.index, child.pid, child.identity, how,
            f" ({child.retiring})" if child.retiring else "")
        self._recover(child)
        if self._stopping or self._quiet:
            return
        index = child.index
        if expected or time.monotonic() - child.started >= MIN_UPTIME:
            self._early_deaths[index] = 0
        else:
            self._early_deaths[index] = self._early_deaths.get(index, 0) + 1
        delay = restart_delay(self._early_deaths[index])
        if delay:
            logger.warning("worker %d died %d times at start; next start in %.1fs", index,
                           self._early_deaths[index], delay)
        self._restart_at[index] = time.monotonic() + delay

    # -- a dead child's jobs -------------------------------------------------------------------

    def _recover(self, child: Child) -> None:
        """Settle the jobs a dead child held: its stuck jobs fail with JobTimeout, the rest go
        back as after any death. ``waitpid`` said it is gone: nothing of it runs any more."""
        try:
            if child.left_stuck:
                self._fail_stuck(child)
            self.store.unregister(child.identity)  # its heartbeat hash goes: no TTL to wait
            moved = recover_process(self.store, child.identity,
                                    poison_limit=self.settings.poison_limit)
            if moved:
                logger.warning("recovered %d job(s) of worker %d at once", moved, child.index)
        except Exception as exc:  # noqa: BLE001 - live workers recover them after PROCESS_TTL
            logger.error("could not recover the jobs of %s now (%s); running workers will "
                         "after PROCESS_TTL", child.identity, exc)
        self._sweeps.append((time.monotonic() + SWEEP_AFTER, child.identity))

    def _fail_stuck(self, child: Child) -> None:
        """Fail the stuck jobs a child left, in a short-lived forked process: their error and
        death handlers run there (an error tracker's SDK may start a thread), so the supervisor
        stays single-threaded and safe to fork. What it could not settle in time is recovered
        with the child's other jobs."""
        pid = self._fork()
        if pid == 0:
            code = 1
            try:
                from .. import storage

                storage.reset_default()
                _settle_stuck(storage.get_default(), self.settings, child)
                code = 0
            except BaseException:  # noqa: BLE001 - the parent recovers them instead
                logger.exception("could not fail the stuck jobs of %s", child.identity)
            finally:
                logging.shutdown()
                os._exit(code)
        deadline = time.monotonic() + KILL_GRACE
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.02)

    def _sweep(self, now: float) -> None:
        """Recover a dead child's jobs again ``SWEEP_AFTER`` seconds later: a command it sent
        just before it died may have reached Redis after the first pass."""
        due = [identity for at, identity in self._sweeps if at <= now]
        self._sweeps = [(at, identity) for at, identity in self._sweeps if at > now]
        for identity in due:
            with contextlib.suppress(Exception):
                recover_process(self.store, identity, poison_limit=self.settings.poison_limit)

    # -- recycling -----------------------------------------------------------------------------

    def _maybe_recycle(self) -> None:
        """Ask one child to leave, if one must and every other child is up and running."""
        if len(self.children) < self.processes or any(c.retiring for c in self.children.values()):
            return
        if not all(child.report for child in self.children.values()):
            return  # a replacement is still starting: capacity would drop below N-1
        for child in self.children.values():
            reason = self.recycle.reason(child.report)
            if reason is None:
                continue
            child.retiring = reason
            child.kill_at = time.monotonic() + self.timeout + KILL_GRACE
            stuck = bool(child.report.get("stuck"))
            logger.warning("recycling worker %d (pid %d): %s", child.index, child.pid, reason)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGUSR1 if stuck else signal.SIGTERM)
            return

    def _kill_overdue(self, now: float) -> None:
        for child in self.children.values():
            if child.kill_at is not None and now >= child.kill_at:
                logger.error("worker %d (pid %d) did not stop in time: SIGKILL", child.index,
                             child.pid)
                child.kill_at = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    # -- in the child --------------------------------------------------------------------------

    def _child(self, index: int, token: str, writer: int) -> NoReturn:
        """The forked child: never returns into the parent's frames."""
        code = 1
        try:
            for child in self.children.values():
                os.close(child.reader)
            # Until its launcher installs its own handlers: TERM/INT end it (nothing to give
            # back yet); TSTP/TTIN, whose default would suspend it, are ignored.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            for sig in (signal.SIGTSTP, signal.SIGTTIN):
                signal.signal(sig, signal.SIG_IGN)
            os.setpgid(0, 0)
            side = ChildSide(index=index, parent_pid=os.getppid(), writer=writer,
                             identity=f"{socket.gethostname()}:{os.getpid()}:{token}",
                             supervisor={"identity": self.identity, "pid": os.getppid(),
                                         "index": index, "processes": self.processes})
            from .. import storage

            storage.reset_default()  # connections of its own
            code = self.run_child(side)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - say why, then exit: the parent restarts it
            logger.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)


def _settle_stuck(store: Storage, settings: KiqSettings, child: Child) -> None:
    """Fail each job ``child`` left stuck with JobTimeout, as its run would have failed."""
    processor = Processor(settings=settings, counters=Counters())
    message = (f"the job was stuck past its time limit (blocked outside Python code); its "
               f"worker process {child.identity} was replaced")
    entries = []
    for raw in store.wip_items(child.identity):
        queue = child.left_stuck.get(jid_of(raw))
        if queue is not None:
            outcome = processor.fail(queue, raw, JobTimeout(message))
            entries.append(Manager._settle_entry(outcome))  # as the manager settles it
    moved = store.settle(child.identity, entries) if entries else []
    logger.warning("%d stuck job(s) of worker %d failed with JobTimeout (its retry policy "
                   "applies)", sum(moved or []), child.index)

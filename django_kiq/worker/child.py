"""The child's side of ``kiq_worker --processes N``: what a forked worker gets from its parent.

Runs in each forked child (worker/supervisor.py forks it; the command builds the child's
:class:`~.launcher.Launcher`). :class:`ChildSide` carries the identity the parent chose, the
parent's description for the process hash, and the write end of the report pipe: the launcher's
heartbeat thread writes one JSON line per beat (jobs done, resident memory, stuck jobs), which
the parent's recycling rules read. :meth:`ChildSide.attach` makes the launcher mind its parent:
``PR_SET_PDEATHSIG`` (Linux: the kernel sends TERM when the parent dies) and the
``kiq-parent-watch`` thread (everywhere: a changed parent pid within 0.5 s) each ask for the
usual graceful stop; USR1 from the parent starts the ``kiq-recycle`` thread, which leaves the
jobs stuck past their time limit to the parent (:meth:`ChildSide._leave_stuck`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from .launcher import Launcher

logger = logging.getLogger("django_kiq.worker")
EXIT_LEFT_STUCK = 70  # a child's status after it left its stuck jobs to the parent
PR_SET_PDEATHSIG = 1


class ChildSide:
    """What a child gets from the supervisor: its identity and parent (for its Launcher), a
    report channel, and :meth:`attach`, which makes the launcher mind its parent."""

    def __init__(self, *, index: int, parent_pid: int, writer: int, identity: str,
                 supervisor: dict[str, Any]):
        self.index = index
        self.parent_pid = parent_pid
        self.identity = identity
        self.supervisor = supervisor
        self.before_exit: list[Callable[[], object]] = []  # run before leaving stuck jobs
        self._writer = writer
        self._lock = threading.Lock()

    def report(self, message: dict[str, Any]) -> None:
        """One JSON line to the parent (a Launcher's ``report`` hook)."""
        data = json.dumps(message).encode() + b"\n"
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._writer, view):]

    def attach(self, launcher: Launcher) -> None:
        """Stop gracefully when the parent dies; leave stuck jobs to the parent on USR1."""
        _die_with_parent()
        threading.Thread(target=self._watch_parent, args=(launcher,), name="kiq-parent-watch",
                         daemon=True).start()
        signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(
            target=self._leave_stuck, args=(launcher,), name="kiq-recycle",
            daemon=True).start())

    def _watch_parent(self, launcher: Launcher) -> None:
        while os.getppid() == self.parent_pid:
            time.sleep(0.5)
        logger.warning("the supervisor (pid %d) is gone: stopping gracefully", self.parent_pid)
        launcher.request_stop()

    def _leave_stuck(self, launcher: Launcher) -> NoReturn:
        """Let the other jobs finish (up to the timeout), then exit leaving the stuck jobs in
        the in-progress list, for the parent to fail once this process is gone."""
        logger.warning("recycling: a job is stuck past its time limit; finishing the other "
                       "jobs (up to %.1fs), then leaving the stuck one(s) to the supervisor",
                       launcher.timeout)
        manager = launcher.manager
        manager.quiet()
        deadline = time.monotonic() + launcher.timeout
        while time.monotonic() < deadline and not set(manager.running()) <= (
                launcher.control.stuck()):
            time.sleep(0.05)
        # Finished jobs are acknowledged by the fetcher's next pass: wait until the list holds
        # only what still runs, or a finished job would be recovered and run again.
        until = time.monotonic() + 5
        while time.monotonic() < until:
            held = Counter(raw for _, raw, _, _ in manager.running().values())
            with contextlib.suppress(Exception):
                if not Counter(launcher.store.wip_items(launcher.identity)) - held:
                    break
            time.sleep(0.05)
        stuck = launcher.control.stuck()
        left = {jid_of(raw): queue for thread, (queue, raw, _, _) in manager.running().items()
                if thread in stuck}
        with contextlib.suppress(Exception):
            launcher.beat_now()  # the last counters
        with contextlib.suppress(Exception):
            self.report({"left_stuck": left})
        logger.warning("leaving %d stuck job(s) to the supervisor: %s", len(left),
                       ", ".join(left))
        for cleanup in self.before_exit:
            with contextlib.suppress(Exception):
                cleanup()
        logging.shutdown()
        os._exit(EXIT_LEFT_STUCK)


def _die_with_parent() -> None:
    """Linux: the kernel sends this process TERM when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def jid_of(raw: bytes) -> str:
    try:
        value = json.loads(raw).get("jid")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return value if isinstance(value, str) else ""


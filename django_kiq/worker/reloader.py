"""``kiq_worker --reload``: restart the worker when its code changes (for development).

Two processes. The **supervisor** is the command as started: it runs the worker as a child (the
same command line, with Django's ``RUN_MAIN=true``), starts it again each time it exits with
:data:`RESTART`, and otherwise exits with the child's status. TERM or INT sent to it reach the
child as one TERM (a graceful stop), and no new child is started after one. In the **child**,
:class:`Watcher` runs Django's own autoreloader (``autoreload.get_reloader()``: the
StatReloader, or Watchman when installed; the files runserver watches: every imported module,
plus template directories) in the ``kiq-reloader`` thread. On a Python file's change, its
``file_changed`` receiver asks the launcher for the usual graceful stop: running jobs finish,
or are pushed back to the head of their queue at the shutdown timeout, so no job is lost; the
command then exits with RESTART and the supervisor starts a worker that imports the new code.

Why not ``autoreload.run_with_reloader`` as runserver uses it: it runs the command in a side
thread (the launcher's signal handlers need the main thread); on a change it exits the child at
once (``sys.exit(3)``), cutting running jobs off without the shutdown that hands them back; and
on TERM or Ctrl-C its supervisor kills the child with SIGKILL (``subprocess.run``'s clean-up).
A module that fails to import ends the child with status 1, and the supervisor with it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from django.utils import autoreload

logger = logging.getLogger("django_kiq.worker")
RESTART = 3  # the child's exit status asking for a new child (Django's reloader uses 3 too)


def is_child() -> bool:
    return os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) == "true"


def supervise() -> int:
    """Run the worker as a child until it exits with something other than RESTART."""
    args = autoreload.get_child_arguments()
    env = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
    state: dict = {"child": None, "stopping": False}

    def forward(signum: int, frame: object) -> None:
        state["stopping"] = True
        child = state["child"]
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    while True:
        child = state["child"] = subprocess.Popen(args, env=env, close_fds=False)
        if state["stopping"]:  # a signal came before the child existed
            child.send_signal(signal.SIGTERM)
        code = child.wait()
        if code != RESTART or state["stopping"]:
            return code if code >= 0 else 128 - code  # killed by a signal: as a shell says
        logger.info("--reload: starting a new worker")


class Watcher:
    """In the worker process: Django's reloader in a thread; a change asks for a graceful stop."""

    def __init__(self, request_stop: Callable[[], None]):
        self.changed: str | None = None  # the first file seen changed
        self._request_stop = request_stop
        self._reloader = autoreload.get_reloader()

    def start(self) -> Watcher:
        autoreload.file_changed.connect(self._on_change, dispatch_uid="django_kiq.reload",
                                        weak=False)
        threading.Thread(target=self._reloader.run, args=(threading.main_thread(),),
                         name="kiq-reloader", daemon=True).start()
        logger.info("--reload: watching for file changes with %s",
                    type(self._reloader).__name__)
        return self

    def _on_change(self, sender: object, file_path: Path, **kwargs: object) -> bool:
        # True in every case: Django's reloader would otherwise sys.exit(3) by itself, which in
        # this thread would only end the watching. Templates and translations are reloaded in
        # place by Django's own receivers, as under runserver.
        if Path(file_path).suffix != ".py":
            return True
        if self.changed is None:
            self.changed = str(file_path)
            logger.info("--reload: %s changed; stopping gracefully (running jobs finish or go "
                        "back to their queue), then restarting", file_path)
        self._request_stop()
        return True

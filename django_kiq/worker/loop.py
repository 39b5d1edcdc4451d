"""Building blocks of the worker's background threads: back-off and a stoppable loop.

``Backoff`` paces a thread whose Redis calls fail (logging once per outage); ``LoopThread`` is a
named daemon thread that calls ``step()`` until stopped, sleeping what ``step()`` returns, and
survives Redis outages and unexpected errors alike. The scheduler and cron threads are
``LoopThread``s; the manager's and launcher's threads use ``Backoff`` directly.
"""

from __future__ import annotations

import logging
import threading

from ..storage import TRANSIENT_ERRORS

logger = logging.getLogger("django_kiq.worker")
MAX_BACKOFF = 5.0
ERROR_PAUSE = 1.0


class Backoff:
    """Exponential back-off for a thread whose Redis calls fail; logs once per outage."""

    def __init__(self, what: str, stop: threading.Event):
        self.what = what
        self.stop = stop
        self.delay = 0.0

    def failed(self, exc: Exception) -> None:
        if self.delay == 0.0:
            logger.warning("%s: Redis unavailable (%s); retrying", self.what, exc)
        self.delay = min(MAX_BACKOFF, self.delay * 2 or 0.05)
        self.stop.wait(self.delay)

    def ok(self) -> None:
        if self.delay:
            logger.warning("%s: Redis is back", self.what)
        self.delay = 0.0


class LoopThread:
    """Run ``step()`` on a named daemon thread until ``stop()``; ``step`` returns the pause."""

    thread_name = "kiq-loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> float:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        backoff = Backoff(self.thread_name, self._stop)
        while not self._stop.is_set():
            try:
                delay = self.step()
                backoff.ok()
            except TRANSIENT_ERRORS as exc:
                backoff.failed(exc)
                continue
            except Exception:  # a bug or a bad entry must not kill the thread for good
                logger.exception("%s: pass failed; trying again", self.thread_name)
                delay = ERROR_PAUSE
            self._stop.wait(delay)

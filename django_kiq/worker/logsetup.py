"""The worker's log lines written off the job threads: one writer thread, batched writes.

Why: at INFO a worker logs a line per finished job. Written the ordinary way, each line is
formatted and written (one ``write`` and one flush, a system call) in the job's own thread, under
the handler's lock: for a no-op job that cost more than the job (issue 16). Here a job thread only
builds the ``LogRecord`` and puts it on a queue; the ``kiq-log-writer`` thread takes what has
gathered every :data:`INTERVAL` seconds, formats it with the user's formatters, and gives each
stream handler the whole batch in one ``write`` and one flush.

Lifecycle: ``kiq_worker`` calls :func:`install` once, in the main thread, after
``logformat.apply`` and its own level set-up and before the launcher starts any thread; it calls
:meth:`LogWriter.stop` when the launcher's run ends, which writes every line still queued (the
"stopped" line included) and puts the user's handlers back. An ``atexit`` hook does the same if
the process ends another way (it runs before ``logging.shutdown``, which flushes the handlers).
A SIGKILL loses at most the last :data:`INTERVAL` seconds of lines.

What it does to the user's ``LOGGING``, exactly (nothing else is touched):

- The ``django_kiq`` logger: the handlers its records reach (its own, and, while it propagates,
  those of its ancestors up to the first that does not propagate, usually the root logger's) are
  handed to the writer, and ``django_kiq`` gets one :class:`QueueingHandler` instead and
  ``propagate = False``. So its records reach exactly the handlers they reached before, once
  each, through the writer; records of any other logger still reach those handlers directly.
- A ``django_kiq.*`` child logger with handlers of its own: those handlers are handed to the
  writer and replaced by a :class:`QueueingHandler`; its ``propagate`` is unchanged.
- Logger levels, handler levels, filters and formatters are unchanged and applied as logging
  applies them (a handler's level and filters are checked in the writer, per record).
- With no handler anywhere on the way (so logging would use its last-resort stderr handler),
  nothing is installed.

Records are not copied or pre-formatted: the writer formats them later, so a record whose
arguments are not plain immutable values (str, numbers, None) has its message computed in the
calling thread first, as ``logging.handlers.QueueHandler`` does, so that it shows the arguments
as they were when logged.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from typing import TypeGuard

#: Seconds the writer lets lines gather before writing them (also the most a line waits).
INTERVAL = 0.01
_PLAIN = (str, int, float, bool, type(None))
_STOP = object()


class QueueingHandler(logging.Handler):
    """Stands in for a logger's handlers: puts each record on the writer's queue."""

    def __init__(self, writer: LogWriter, targets: list[logging.Handler]):
        super().__init__()
        self.writer = writer
        self.targets = targets

    def handle(self, record: logging.LogRecord) -> bool:  # no lock, no filters of its own
        if threading.get_ident() == self.writer.ident:  # a job line built by the writer
            self.writer.built.append((self.targets, record))
            return True
        args = record.args
        if args and not (type(args) is tuple and all(type(a) in _PLAIN for a in args)):
            record.msg, record.args = record.getMessage(), None
        self.writer.queue.put((self.targets, record))
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


class LogWriter:
    """The ``kiq-log-writer`` thread and the loggers it stands in for."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
        self._thread = threading.Thread(target=self._run, name="kiq-log-writer", daemon=True)
        self._lock = threading.Lock()
        self.ident: int | None = None
        self.built: list[tuple[list[logging.Handler], logging.LogRecord]] = []
        self._templates: dict[tuple[str, int], dict] = {}

    def take_over(self, logger: logging.Logger, targets: list[logging.Handler],
                  propagate: bool) -> None:
        self._saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [QueueingHandler(self, targets)]
        logger.propagate = propagate

    def start(self) -> LogWriter:
        global _active
        self._thread.start()
        atexit.register(self.stop)
        _active = self
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Write every queued line, end the thread, give the loggers their handlers back."""
        global _active
        with self._lock:
            if not self._saved:
                return
            if _active is self:
                _active = None
            for logger, handlers, propagate in reversed(self._saved):
                logger.handlers, logger.propagate = handlers, propagate
            self._saved = []
        self.queue.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        atexit.unregister(self.stop)

    def _run(self) -> None:
        self.ident = threading.get_ident()
        get, wait = self.queue.get, threading.Event().wait
        while True:
            batch = [get()]
            wait(INTERVAL)  # let the lines of the next few ms join this write
            try:
                while True:
                    batch.append(self.queue.get_nowait())
            except queue.Empty:
                pass
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                elif len(item) == 2:
                    self.built.append(item)
                else:
                    self._build(*item)
            built, self.built = self.built, []
            write(built)
            if stop:
                return

    def _build(self, logger: logging.Logger, level: int, msg: str, args: tuple, extra: dict,
               created: float, thread: int, thread_name: str) -> None:
        """The record :func:`job_line` deferred, passed to the logger as ``logger.info`` would
        (its filters, then its handlers: the QueueingHandlers append to ``built``)."""
        if logging.getLogRecordFactory() is not logging.LogRecord:
            record = logger.makeRecord(logger.name, level, _SRC, 0, msg, args, None, None, extra)
        else:  # the constant fields once per logger and level, then the job's
            key = (logger.name, level)
            template = self._templates.get(key)
            if template is None:
                template = self._templates[key] = logging.LogRecord(
                    logger.name, level, _SRC, 0, "", None, None).__dict__.copy()
            record = logging.LogRecord.__new__(logging.LogRecord)
            record.__dict__.update(template)
            record.__dict__.update(extra)
            record.msg, record.args = msg, args
        record.created, record.thread, record.threadName = created, thread, thread_name
        record.msecs = int((created - int(created)) * 1000) + 0.0
        start = logging._startTime  # type: ignore[attr-defined]  # private: not in typeshed
        record.relativeCreated = (created * 1e9 - start) / 1e6 \
            if isinstance(start, int) else (created - start) * 1000
        logger.handle(record)


def write(items: list[tuple[list[logging.Handler], logging.LogRecord]]) -> None:
    """Hand each record to its handlers; a stream handler gets one write and one flush."""
    pending: dict[logging.StreamHandler, list[tuple[logging.LogRecord, str]]] = {}
    for targets, record in items:
        for handler in targets:
            if record.levelno < handler.level:
                continue
            if not batchable(handler):
                handler.handle(record)
                continue
            passed = handler.filter(record)
            if not passed:
                continue
            this = passed if isinstance(passed, logging.LogRecord) else record
            try:
                line = handler.format(this) + handler.terminator
            except Exception:  # noqa: BLE001 - as Handler.emit: report, go on
                handler.handleError(this)
                continue
            pending.setdefault(handler, []).append((this, line))
    for handler, lines in pending.items():
        with handler.lock or _NO_LOCK:
            try:
                handler.stream.write("".join(line for _, line in lines))
                handler.flush()
            except Exception:  # noqa: BLE001
                handler.handleError(lines[-1][0])


_NO_LOCK = threading.Lock()
_SRC = __file__
_active: LogWriter | None = None


def job_line(logger: logging.Logger, level: int, msg: str, args: tuple, extra: dict) -> None:
    """``logger.log(level, msg, *args, extra=extra)`` for the worker's per-job lines, with the
    record built and formatted on the writer thread when one runs (else logged at once).

    The caller checked ``logger.isEnabledFor(level)``; ``args`` must be immutable values. The
    record's time and thread are the caller's; its source location is this module's.
    """
    writer = _active
    if writer is None:
        logger.log(level, msg, *args, extra=extra)
        return
    thread = threading.current_thread()
    writer.queue.put((logger, level, msg, args, extra, time.time(), thread.ident, thread.name))
_BATCHED_EMITS = (logging.StreamHandler.emit, logging.FileHandler.emit)


def batchable(handler: logging.Handler) -> TypeGuard[logging.StreamHandler]:
    """A stream handler whose ``emit`` is logging's own (formats, writes, flushes), with its
    stream open: its lines can be joined into one write."""
    return (type(handler).emit in _BATCHED_EMITS
            and getattr(handler, "stream", None) is not None)


def install(root_name: str = "django_kiq") -> LogWriter | None:
    """Put the writer in front of the ``django_kiq`` loggers' handlers (see the module doc)."""
    top = logging.getLogger(root_name)
    targets: list[logging.Handler] = []
    logger: logging.Logger | None = top
    while logger is not None:
        targets.extend(logger.handlers)
        if not logger.propagate:
            break
        logger = logger.parent
    if not targets:
        return None
    writer = LogWriter()
    for name, child in list(logging.root.manager.loggerDict.items()):
        if (name.startswith(root_name + ".") and isinstance(child, logging.Logger)
                and child.handlers):
            writer.take_over(child, child.handlers[:], child.propagate)
    writer.take_over(top, targets, False)
    return writer.start()

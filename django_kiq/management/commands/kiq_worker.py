"""``manage.py kiq_worker``: options -> settings -> ``Launcher.run()``.

Around the run, and nothing more: it waits for Redis before building the launcher (or exits, with
``--exit-on-redis-error``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.checks import Tags
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from django_kiq import __version__, periodic, storage
from django_kiq import tasks  # noqa: F401 - registers the job every django.tasks task runs as
from django_kiq.conf import KiqSettings, get_settings
from django_kiq.observability import logformat
from django_kiq.registry import QUEUE_NAME
from django_kiq.worker.fetcher import parse_queue_args
from django_kiq.worker import reloader
from django_kiq.worker import logsetup
from django_kiq.worker.launcher import Launcher
from django_kiq.worker.child import ChildSide
from django_kiq.worker.supervisor import Recycle, Supervisor, parse_processes
from django_kiq.worker.loop import MAX_BACKOFF
from django_kiq.worker.cron_ticker import CronTicker

logger = logging.getLogger("django_kiq.worker")
T = TypeVar("T")


class Command(BaseCommand):
    help = "Run a django-kiq worker: a pool of threads processing jobs from Redis queues."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--concurrency", type=int, default=None,
                            help="processor threads (default KIQ['CONCURRENCY'] = 5)")
        parser.add_argument("-q", "--queue", action="append", default=[], metavar="NAME[,WEIGHT]",
                            help="queue to process; repeat for several. Without weights the "
                                 "order is strict; with weights, weighted random.")
        parser.add_argument("--timeout", type=float, default=None,
                            help="seconds to wait for running jobs on shutdown (default 25)")
        parser.add_argument("--tag", default=None, help="a label shown in the admin")
        parser.add_argument("--reload", action="store_true",
                            help="development: restart the worker (gracefully) when Python "
                                 "files change, with Django's autoreloader")
        parser.add_argument("--async-concurrency", type=int, default=None, metavar="N",
                            help="async jobs run at once on the worker's event loop (default "
                                 "KIQ['ASYNC_CONCURRENCY'] = 100; 0 runs them on the threads)")
        parser.add_argument("--exit-on-redis-error", action="store_true",
                            help="exit (status 1, one line) when Redis cannot be reached at "
                                 "start, instead of waiting for it")
        parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                            help="serve Prometheus metrics on this port (default "
                                 "KIQ['METRICS_PORT']; needs django-kiq[prometheus])")
        parser.add_argument("--processes", default=None, metavar="N",
                            help="worker processes forked by one supervisor, or 'auto' (one "
                                 "per usable core); default KIQ['PROCESSES'] = 1: no supervisor")
        parser.add_argument("--max-rss", type=int, default=None, metavar="MB",
                            help="replace a worker process whose resident memory reaches MB "
                                 "(default KIQ['MAX_RSS']; runs a supervisor)")
        parser.add_argument("--max-jobs", type=int, default=None, metavar="N",
                            help="replace a worker process after N jobs (default "
                                 "KIQ['MAX_JOBS']; runs a supervisor)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["reload"] and not reloader.is_child():
            sys.exit(reloader.supervise())  # the worker runs in a child, restarted on changes
        self._check_queue_names(options["queue"])
        self.check(tags=["django_kiq"])
        settings = self._with_metrics(get_settings(), options["metrics_port"])
        if options["async_concurrency"] is not None:
            if options["async_concurrency"] < 0:
                raise CommandError("--async-concurrency must be at least 0")
            settings = settings.replace(async_concurrency=options["async_concurrency"])
        try:
            queues, strict = parse_queue_args(options["queue"] or settings.queues)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        concurrency = options["concurrency"] or settings.concurrency
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        try:
            entries = periodic.entries(settings)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        logformat.apply(settings.log_format)  # first: it may install the only handler
        self._configure_logging(options["verbosity"])
        store, exit_on_error = storage.get_default(), options["exit_on_redis_error"]
        self._until_redis(store.round_trip_us, store, exit_on_error)
        # After the wait: the Redis checks (eviction policy) then see the server.
        self.check(tags=[Tags.database], fail_level=40)  # warnings are printed, not fatal
        timeout = settings.timeout if options["timeout"] is None else options["timeout"]

        def build(**child: Any) -> Launcher:  # child: a supervised process's identity etc.
            return Launcher(
                settings=settings, store=storage.get_default(), queues=queues, strict=strict,
                concurrency=concurrency, timeout=timeout,
                tag=options["tag"] if options["tag"] is not None else settings.tag,
                extra_threads=[lambda launcher: CronTicker(
                    store=launcher.store, identity=launcher.identity, settings=settings,
                    entries=entries)] if entries else [], **child)

        processes, recycle = self._scale(options, settings)
        if processes > 1 or recycle:
            supervisor = Supervisor(
                processes=processes, store=store, settings=settings, timeout=timeout,
                recycle=recycle, run_child=lambda side: self._run_child(
                    side, build, settings, exit_on_error))
            self.stdout.write(self._supervisor_banner(supervisor, store, queues, strict,
                                                      concurrency, timeout))
            sys.exit(supervisor.run())
        launcher = self._until_redis(build, store, exit_on_error)
        self.stdout.write(self._banner(launcher))
        if settings.metrics_port is not None:
            self._serve_metrics(launcher, settings.metrics_port)
        watcher = reloader.Watcher(launcher.request_stop).start() if options["reload"] else None
        writer = logsetup.install()  # log lines written off the job threads, in batches
        try:
            code = launcher.run()
        finally:
            if writer is not None:
                writer.stop()  # every queued line written, the user's handlers back
        sys.exit(reloader.RESTART if watcher and watcher.changed else code)

    def _run_child(self, side: ChildSide, build: Callable[..., Launcher], settings: KiqSettings,
                   exit_on_error: bool) -> int:
        """One process of ``--processes N``, in the forked child (worker/supervisor.py)."""
        launcher = self._until_redis(lambda: build(
            identity=side.identity, supervisor=side.supervisor, report=side.report),
            storage.get_default(), exit_on_error)
        side.attach(launcher)
        if settings.metrics_port is not None:  # one port per process: PORT + its index
            try:
                self._serve_metrics(launcher, settings.metrics_port + side.index)
            except CommandError as exc:  # one line: the supervisor restarts it, backing off
                logger.error("worker %d cannot start: %s", side.index, exc)
                return 1
        writer = logsetup.install()
        if writer is not None:
            side.before_exit.append(writer.stop)
        try:
            return launcher.run()
        finally:
            if writer is not None:
                writer.stop()

    @staticmethod
    def _scale(options: dict[str, Any], settings: KiqSettings) -> tuple[int, Recycle]:
        """``--processes`` and the recycling limits over their settings."""
        try:
            processes = parse_processes(settings.processes if options["processes"] is None
                                        else options["processes"])
        except ValueError as exc:
            raise CommandError(f"--processes: {exc}") from None
        limits: dict[str, int | None] = {}
        for name, option, value in (("max_rss_mb", "--max-rss", settings.max_rss),
                                    ("max_jobs", "--max-jobs", settings.max_jobs)):
            given = options[option[2:].replace("-", "_")]
            limit = limits[name] = value if given is None else given
            if limit is not None and limit < 1:
                raise CommandError(f"{option} must be at least 1")
        if (processes > 1 or any(v is not None for v in limits.values())) and options["reload"]:
            raise CommandError("--reload runs one worker process: it does not combine with "
                               "--processes, --max-rss or --max-jobs")
        return processes, Recycle(**limits)

    def _until_redis(self, attempt: Callable[[], T], store: storage.Storage,
                     exit_on_error: bool) -> T:
        """``attempt()``'s value once Redis answers.

        While Redis is unreachable: one log line per try, then a pause growing to MAX_BACKOFF,
        as the worker's threads do after a disconnect; INT or TERM end the wait (exit 0). With
        ``exit_on_error``: a CommandError naming the reason (one line, exit status 1). Another
        Redis error (the server answers but refuses a command) is no reason to wait: it ends
        the start the same way.
        """
        previous: dict = {}  # signal -> the handler to restore
        tries, delay, stop = 0, 0.0, threading.Event()
        try:
            while True:
                try:
                    value = attempt()
                except storage.RedisError as exc:
                    reason = f"cannot reach Redis at {store.describe()}: {_one_line(exc)}"
                    if not isinstance(exc, storage.TRANSIENT_ERRORS):
                        raise CommandError(f"Redis at {store.describe()} refused the start: "
                                           f"{_one_line(exc)}") from None
                    if exit_on_error:
                        raise CommandError(reason) from None
                    previous = previous or _stop_on_signals(stop)
                    tries, delay = tries + 1, min(MAX_BACKOFF, delay * 2 or 0.5)
                    logger.warning("%s Retrying in %.1fs (try %d).", reason, delay, tries)
                    if stop.wait(delay):
                        logger.info("stopped while waiting for Redis")
                        sys.exit(0)
                    continue
                if tries:
                    logger.info("Redis at %s answers; starting", store.describe())
                return value
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _with_metrics(settings: KiqSettings, port: int | None) -> KiqSettings:
        """``--metrics-port`` over ``KIQ["METRICS_PORT"]``; fails now without prometheus_client."""
        port = settings.metrics_port if port is None else port
        if port is None:
            return settings
        if not 0 < port < 65536:
            raise CommandError(f"--metrics-port {port}: not a TCP port (1-65535)")
        try:
            from django_kiq.observability import prometheus  # noqa: F401 - the check
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        return settings.replace(metrics_port=port)

    def _serve_metrics(self, launcher: Launcher, port: int) -> None:
        from django_kiq.observability import prometheus

        try:
            prometheus.serve(port=port, busy=launcher.manager.busy,
                             concurrency=launcher.concurrency, store=launcher.store)
        except OSError as exc:
            raise CommandError(f"--metrics-port {port}: cannot listen: {exc}") from None
        self.stdout.write(f"  metrics:     http://0.0.0.0:{port}/metrics")

    @staticmethod
    def _check_queue_names(specs: list[str]) -> None:
        """The same names @job accepts: a space or ':' in ``-q`` is a typo, not two queues."""
        for spec in specs:
            name = spec.partition(",")[0]
            if not QUEUE_NAME.match(name):
                raise CommandError(f"-q {spec!r}: {name!r} is not a valid queue name (letters, "
                                   "digits, '_', '.', '-'; at most 128 characters)")

    def _banner(self, launcher: Launcher) -> str:
        runner = launcher.manager.async_runner
        queues = ", ".join(f"{n} (weight {w})" for n, w in launcher.queues)
        return (f"django-kiq {__version__} worker {launcher.identity}\n"
                f"  redis:       {launcher.store.describe()}\n"
                f"  queues:      {queues} ({'strict' if launcher.manager.fetcher.order.strict else 'weighted'})\n"
                f"  concurrency: {launcher.concurrency}"
                + (f" threads + {runner.concurrency} async\n" if runner else "\n") +
                f"  timeout:     {launcher.timeout}s")

    @staticmethod
    def _supervisor_banner(supervisor: Supervisor, store: storage.Storage,
                           queues: list[tuple[str, int]], strict: bool, concurrency: int,
                           timeout: float) -> str:
        recycle = supervisor.recycle
        limits = ", ".join(([f"max-rss {recycle.max_rss_mb} MB"] if recycle.max_rss_mb else [])
                           + ([f"max-jobs {recycle.max_jobs}"] if recycle.max_jobs else []))
        names = ", ".join(f"{n} (weight {w})" for n, w in queues)
        return (f"django-kiq {__version__} supervisor {supervisor.identity}\n"
                f"  processes:   {supervisor.processes} processes, forked after loading\n"
                f"  redis:       {store.describe()}\n"
                f"  queues:      {names} ({'strict' if strict or len(queues) == 1 else 'weighted'})\n"
                f"  concurrency: {concurrency} threads per process\n"
                f"  timeout:     {timeout}s\n"
                f"  recycle:     {limits or 'stuck jobs only'}")

    @staticmethod
    def _configure_logging(verbosity: int) -> None:
        log = logging.getLogger("django_kiq")
        if not log.handlers and not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
        if verbosity >= 2:
            log.setLevel(logging.DEBUG)
        elif log.level == logging.NOTSET:
            log.setLevel(logging.INFO)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _stop_on_signals(stop: threading.Event) -> dict:
    """INT and TERM set ``stop`` (no KeyboardInterrupt traceback); returns the old handlers.
    Only the main thread may set handlers: elsewhere (``call_command`` in a thread) none."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)}

"""``manage.py kiq_worker``: options -> settings -> ``Launcher.run()``; nothing else."""

from __future__ import annotations

import logging
import sys

from django.core.checks import Tags
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from django_kiq import __version__, periodic, storage
from django_kiq.conf import get_settings
from django_kiq.registry import QUEUE_NAME
from django_kiq.worker.fetcher import parse_queue_args
from django_kiq.worker.launcher import Launcher
from django_kiq.worker.cron_ticker import CronTicker


class Command(BaseCommand):
    help = "Run a django-kiq worker: a pool of threads processing jobs from Redis queues."
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("-c", "--concurrency", type=int, default=None,
                            help="processor threads (default KIQ['CONCURRENCY'] = 5)")
        parser.add_argument("-q", "--queue", action="append", default=[], metavar="NAME[,WEIGHT]",
                            help="queue to process; repeat for several. Without weights the "
                                 "order is strict; with weights, weighted random.")
        parser.add_argument("--timeout", type=float, default=None,
                            help="seconds to wait for running jobs on shutdown (default 25)")
        parser.add_argument("--tag", default=None, help="a label shown in the admin")

    def handle(self, *args, **options) -> None:
        self._check_queue_names(options["queue"])
        self.check(tags=["django_kiq"])
        self.check(tags=[Tags.database], fail_level=40)  # warnings are printed, not fatal
        settings = get_settings()
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
        self._configure_logging(options["verbosity"])
        launcher = Launcher(
            settings=settings, store=storage.get_default(), queues=queues, strict=strict,
            concurrency=concurrency,
            timeout=settings.timeout if options["timeout"] is None else options["timeout"],
            tag=options["tag"] if options["tag"] is not None else settings.tag,
            extra_threads=[lambda launcher: CronTicker(
                store=launcher.store, identity=launcher.identity, settings=settings,
                entries=entries)] if entries else [])
        self.stdout.write(self._banner(launcher))
        sys.exit(launcher.run())

    @staticmethod
    def _check_queue_names(specs: list[str]) -> None:
        """The same names @job accepts: a space or ':' in ``-q`` is a typo, not two queues."""
        for spec in specs:
            name = spec.partition(",")[0]
            if not QUEUE_NAME.match(name):
                raise CommandError(f"-q {spec!r}: {name!r} is not a valid queue name (letters, "
                                   "digits, '_', '.', '-'; at most 128 characters)")

    def _banner(self, launcher: Launcher) -> str:
        queues = ", ".join(f"{n} (weight {w})" for n, w in launcher.queues)
        return (f"django-kiq {__version__} worker {launcher.identity}\n"
                f"  redis:       {launcher.store.describe()}\n"
                f"  queues:      {queues} ({'strict' if launcher.manager.fetcher.order.strict else 'weighted'})\n"
                f"  concurrency: {launcher.concurrency}\n"
                f"  timeout:     {launcher.timeout}s")

    @staticmethod
    def _configure_logging(verbosity: int) -> None:
        log = logging.getLogger("django_kiq")
        if not log.handlers and not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
        if verbosity >= 2:
            log.setLevel(logging.DEBUG)
        elif log.level == logging.NOTSET:
            log.setLevel(logging.INFO)

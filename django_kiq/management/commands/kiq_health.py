"""``manage.py kiq_health``: exit 0 if a worker's heartbeat is fresh, else one line and non-zero.

For Kubernetes liveness and readiness probes and systemd timers (docs/deployment.md). Exit
statuses as for ``manage.py kiq`` (``django_kiq.cli``): 1 Redis unreachable, 2 usage, 3 no
fresh heartbeat. The decision is :func:`django_kiq.cli.health.judge`.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand

from django_kiq import storage
from django_kiq.cli import NOT_FOUND, REDIS, USAGE, Error, one_line
from django_kiq.cli.health import check
from django_kiq.conf import get_settings
from django_kiq.exceptions import RedisUnavailable


class Command(BaseCommand):
    help = ("Exit 0 when Redis answers and a worker's heartbeat is fresh (younger than "
            "KIQ['PROCESS_TTL']); otherwise print why and exit non-zero.")
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--process", metavar="ID", help="this worker only: its identity, or a prefix such as "
                                "HOST:PID:")
        which.add_argument("--this-host", action="store_true",
                           help="any worker whose hostname is this machine's (or pod's)")
        parser.add_argument("--max-age", type=float, default=None, metavar="SECONDS",
                            help="the oldest beat still fresh (default KIQ['PROCESS_TTL'])")

    def handle(self, *args: Any, **options: Any) -> None:
        max_age = options["max_age"]
        if max_age is None:
            max_age = get_settings().process_ttl
        elif not max_age > 0:
            raise Error("--max-age must be more than 0 seconds", USAGE)
        store = storage.get_default()
        try:
            verdict = check(store, max_age=max_age, identity=options["process"],
                            this_host=options["this_host"])
        except (storage.RedisError, RedisUnavailable) as exc:
            raise Error(f"Redis at {store.describe()}: {one_line(exc)}", REDIS) from None
        if not verdict.healthy:
            raise Error(verdict.reason, NOT_FOUND)
        if options["verbosity"] > 0:
            self.stdout.write(verdict.reason)

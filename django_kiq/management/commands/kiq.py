"""``manage.py kiq <subcommand>``: the admin's pages and actions from a shell (docs/cli.md).

Builds the parser from the ``django_kiq.cli`` modules (each adds its own subcommands) and runs
the chosen one; holds no logic of its own. A Redis failure anywhere becomes one line on stderr
and exit status 1; every other status is set by the subcommand (``django_kiq.cli``).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from django.core.management.base import BaseCommand

from django_kiq import storage
from django_kiq.cli import REDIS, Context, Error, actions, one_line, reads, sets
from django_kiq.exceptions import RedisUnavailable


class Command(BaseCommand):
    help = "Look at and manage django-kiq queues, job sets and workers (see docs/cli.md)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--json", action="store_true",
                            help="print JSON with stable keys, for scripts")
        sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        reads.add_parsers(sub, common)
        sets.add_parsers(sub, common)
        actions.add_parsers(sub, common)

    def handle(self, *args: Any, **options: Any) -> None:
        ctx = Context(stdout=self.stdout, stderr=self.stderr, json=options["json"],
                      yes=options.get("yes", False))
        if options["verbosity"] < 2:  # the command reports outcomes itself; -v 2 adds the log
            logging.getLogger("django_kiq").setLevel(logging.CRITICAL)
        try:
            options["handler"](options, ctx)
        except (storage.RedisError, RedisUnavailable) as exc:
            raise Error(f"Redis at {storage.get_default().describe()}: {one_line(exc)}",
                        REDIS) from None

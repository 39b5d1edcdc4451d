"""The operations CLI behind ``manage.py kiq`` and ``manage.py kiq_health``.

Thin adapters over :mod:`django_kiq.api`, like the admin: each module reads or acts through the
API and formats the answer (``output``), asks before destroying (``confirm``), and fails with an
:class:`Error` carrying an exit status a script can rely on. Every read is a page or a bounded
search step, so a million entries never load into the command's memory.

Exit statuses (docs/cli.md):

====  ============================================================================
0     done
1     Redis could not be reached, or refused a command
2     usage: a bad option, argument or value (an unknown job name, args not a JSON array)
3     not found: no such queue, process, job or live worker (``kiq_health``: not healthy)
4     nothing done: the confirmation was declined or impossible (no TTY and no ``--yes``),
      or the job was not enqueued (a client middleware or a unique lock dropped it)
====  ============================================================================
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import IO, Any

from django.core.management.base import CommandError

from .output import dumps

OK = 0
REDIS = 1
USAGE = 2
NOT_FOUND = 3
NOT_DONE = 4


class Error(CommandError):
    """A one-line failure with its exit status; Django prints ``Error: <message>`` on stderr."""

    def __init__(self, message: str, code: int):
        super().__init__(message, returncode=code)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(kw_only=True)
class Context:
    """What a subcommand writes to and asks on: the command's streams and the common options."""

    stdout: Any  # Django's OutputWrapper (adds the newline)
    stderr: Any
    json: bool = False
    yes: bool = False
    stdin: IO[str] = field(default_factory=lambda: sys.stdin)

    def show(self, text: str, data: Any) -> None:
        """``data`` as JSON with ``--json``, else ``text`` for people."""
        self.stdout.write(dumps(data) if self.json else text)

    def confirm(self, question: str) -> None:
        """Ask on the terminal (the question goes to stderr, so ``--json`` output stays clean);
        without ``--yes`` and with no terminal to ask on, refuse: nothing is done."""
        if self.yes:
            return
        if not self.stdin.isatty():
            raise Error(f"{question} Not confirmed: no terminal to ask on; pass --yes to "
                        "confirm. Nothing was done.", NOT_DONE)
        self.stderr.write(f"{question} [y/N] ", ending="")
        self.stderr.flush()
        if self.stdin.readline().strip().lower() not in ("y", "yes"):
            raise Error("not confirmed; nothing was done", NOT_DONE)

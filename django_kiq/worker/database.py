"""Transactions a job leaves open: ended when the job ends, so they never reach the next job.

Runs on a ``kiq-processor-N`` thread, around each job, called by the processor; Django's
connections are per thread, so it only ever sees the connections of the job that just ran.
Django's ``close_old_connections`` (which the processor also calls before and after each job, as
Django does around a request) drops a connection a job left with autocommit off, errors or past
``CONN_MAX_AGE``. Two things a job can leave behind that it does not handle:

- an ``atomic()`` block entered and never exited (``transaction.atomic().__enter__()``, a
  generator holding one, an exception swallowed in the wrong place). Closing such a connection
  keeps Django's wrapper "in a transaction" forever, and every later query on the thread fails with
  "the connection is closed". The blocks the job opened are exited here, as if by an exception:
  their work is rolled back.
- a transaction opened with raw SQL (``cursor.execute("BEGIN")``) behind Django's back: the next
  job would write into it and never commit. Seen through the driver (psycopg 2 and 3, sqlite3),
  the connection is closed, which rolls it back on the server.

Only blocks opened during the job are touched: a job run inside an outer transaction (a test's)
leaves that one alone.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from django.db import connections
from django.db.backends.signals import connection_created

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("django_kiq.job")


class TransactionLeftOpen(Exception):
    """Passed to the ``__exit__`` of atomic blocks a job left open: they roll back."""


class _Thread(threading.local):
    #: None: not known yet (check); False: no connection open on this thread since the last
    #: check; True: one may be open (Django's connection_created fired on this thread).
    may_be_open: bool | None = None


_thread = _Thread()


# A connection_created receiver: the signal passes these arguments, unused here.
def _opened(sender: object, connection: object, **kwargs: object) -> None:  # noqa: ARG001
    _thread.may_be_open = True  # sent by connect(), in the thread that connects


connection_created.connect(_opened, weak=False, dispatch_uid="django_kiq.worker.database")


def may_be_open() -> bool:
    """False when no database connection has been opened on this thread since
    :func:`note_closed` last found them all closed: then the per-job clean-up around a job that
    never touched the database has nothing to do, and is skipped (issue 16: it was ~11% of a
    no-op job's CPU). The first call on a thread says True, so the first job there checks."""
    return _thread.may_be_open is not False


def note_closed() -> None:
    """After the per-job clean-up: remember whether any connection stays open on this thread."""
    _thread.may_be_open = any(conn.connection is not None
                              for conn in connections.all(initialized_only=True))


def atomic_depths() -> dict[str, int]:
    """How many atomic blocks each of this thread's connections is in (before a job)."""
    return {conn.alias: len(conn.atomic_blocks) for conn in connections.all(initialized_only=True)}


def end_open_transactions(before: dict[str, int], *, jid: str, name: str) -> None:
    """Roll back what the job left open on this thread's connections; never raises."""
    for conn in connections.all(initialized_only=True):
        depth = before.get(conn.alias, 0)
        try:
            if len(conn.atomic_blocks) > depth:
                logger.warning("job %s jid=%s left %d atomic block(s) open on database %r; "
                               "rolled back", name, jid, len(conn.atomic_blocks) - depth,
                               conn.alias)
                _exit_blocks(conn, depth)
            elif not conn.in_atomic_block and _raw_transaction_open(conn):
                logger.warning("job %s jid=%s left a transaction open on database %r outside "
                               "atomic(); connection closed (rolled back)", name, jid, conn.alias)
                conn.close()
        except Exception:  # noqa: BLE001 - the next job gets a fresh connection instead
            logger.exception("could not end the transaction job %s jid=%s left open on %r; "
                             "dropping the connection", name, jid, conn.alias)
            _drop(conn)


def _exit_blocks(conn: BaseDatabaseWrapper, depth: int) -> None:
    error = TransactionLeftOpen("the job ended inside this atomic block")
    while len(conn.atomic_blocks) > depth:
        # Atomic.__exit__ with an exception: roll back to its savepoint, or the whole
        # transaction for the outermost one, and restore autocommit, as a raise would have.
        conn.atomic_blocks[-1].__exit__(TransactionLeftOpen, error, None)


def _raw_transaction_open(conn: BaseDatabaseWrapper) -> bool:
    """True when the driver reports a transaction Django does not know about."""
    raw = conn.connection
    if raw is None or not conn.get_autocommit():
        return False
    status = getattr(getattr(raw, "info", None), "transaction_status", None)
    if status is not None:  # psycopg 2 and 3: INTRANS (2) or INERROR (3); a broken
        return int(status) in (2, 3)  # connection (4) is close_old_connections' business
    return bool(getattr(raw, "in_transaction", False))  # sqlite3


def _drop(conn: BaseDatabaseWrapper) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already broken: forget it below
        pass
    if conn.closed_in_transaction or conn.connection is not None:
        # What Atomic.__exit__ does once the outermost block of a closed connection ends: the
        # next query connects afresh, and connect() resets the transaction state.
        conn.connection = None

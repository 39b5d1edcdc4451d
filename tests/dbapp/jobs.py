"""Jobs that use the database, for tests/test_postgres.py (workers import them as an app's jobs).

Each run leaves its trace in the database it was given (a :class:`Note`), so a test reads what
happened from the database itself: which thread ran the job and on which server connection
(``backend_pid``, PostgreSQL's process id of the session), and what it read.
"""

import threading
import time

from django.db import connection, transaction

from django_kiq import job
from django_kiq.api import Queue

from .models import Counter, Note


def _note(token: str, seq: int, seen: int | None = None) -> Note:
    # The ORM query before it has opened the connection, so its backend pid is known.
    pid = connection.connection.info.backend_pid if connection.vendor == "postgresql" else None
    return Note.objects.create(token=token, seq=seq, seen=seen, backend_pid=pid,
                               thread=threading.current_thread().name)


@job
def orm_note(token, seq, counter="orm"):
    """Read a counter and write a note: one ORM read and one ORM write."""
    seen = Counter.objects.filter(name=counter).values_list("value", flat=True).first()
    _note(token, seq, seen)


def retry_in_a_second(count, exc, job):
    return 1


@job(retry=30, retry_in=retry_in_a_second)
def orm_note_retrying(token, seq):
    """``orm_note`` retried every second (up to 30 times) while the database is away."""
    seen = Counter.objects.filter(name="orm").values_list("value", flat=True).first()
    _note(token, seq, seen)


# -- jobs that leave their connection in a bad state (the next job must not notice) ----------

@job(retry=False)
def leave_atomic_open(token):
    """Enter an atomic block and never leave it: the note must never be committed."""
    transaction.atomic().__enter__()
    _note(token, -1)


@job(retry=False)
def error_mid_transaction(token):
    """Write, then hit a server-side error inside a transaction left open: the transaction is
    aborted on the server ("commands ignored until end of transaction block")."""
    transaction.atomic().__enter__()
    _note(token, -1)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    except Exception:  # swallowed: the job "succeeds" with a poisoned connection
        pass


@job(retry=False)
def kill_own_connection(token):
    """The server ends this job's session mid-job (as a restart or pg_terminate_backend would)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


@job(retry=False)
def raw_begin(token):
    """Open a transaction with raw SQL, behind Django's back, and write in it."""
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
    _note(token, -1)


# -- select_for_update and a follow-up enqueued inside the transaction -----------------------

@job
def locked_increment(name, rollback=False, hold=0.0):
    """Lock the counter row, increment it, enqueue ``follow_up`` with the new value, hold the
    lock ``hold`` seconds, then commit (or roll back). The follow-up must reach Redis only at
    commit: the note records whether it was already in its queue inside the transaction."""
    try:
        with transaction.atomic():
            counter = Counter.objects.select_for_update().get(name=name)
            counter.value += 1
            counter.save(update_fields=["value"])
            jid = follow_up.enqueue(name, counter.value)
            early = Queue("followups").find(jid) is not None
            Note.objects.create(token=f"{name}:early", seq=counter.value, seen=int(early),
                                thread=threading.current_thread().name)
            time.sleep(hold)
            if rollback:
                raise _Rollback
    except _Rollback:
        pass


class _Rollback(Exception):
    pass


@job(queue="followups")
def follow_up(name, value):
    """Record the counter value this job sees: never less than ``value`` if pushed at commit."""
    _note(f"{name}:follow", value, Counter.objects.get(name=name).value)

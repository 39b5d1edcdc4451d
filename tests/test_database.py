"""django_kiq/worker/database.py: what a job leaves open is ended before the next job.

In-process, on the suite's database (SQLite, and PostgreSQL in scripts/test.sh's second pass);
tests/test_postgres.py checks the same through a real worker.
"""

import logging

import pytest
from django.db import connection, transaction

from django_kiq.worker import database
from tests import pg
from tests.dbapp.models import Note

pytestmark = pytest.mark.django_db(transaction=True)


def write(seq: int) -> None:
    Note.objects.create(token="t", seq=seq, thread="test")


def seqs() -> list[int]:
    return sorted(Note.objects.values_list("seq", flat=True))


def test_atomic_blocks_left_open_are_rolled_back(caplog):
    before = database.atomic_depths()
    transaction.atomic().__enter__()
    write(1)
    transaction.atomic().__enter__()  # nested: a savepoint
    write(2)
    with caplog.at_level(logging.WARNING, "django_kiq.job"):
        database.end_open_transactions(before, jid="j1", name="leaky")
    assert not connection.in_atomic_block and connection.get_autocommit()
    assert "job leaky jid=j1 left 2 atomic block(s) open" in caplog.text
    assert seqs() == []
    write(3)  # the connection works, in autocommit
    assert seqs() == [3]


def test_only_blocks_opened_during_the_job_are_ended():
    with transaction.atomic():  # an outer transaction of the caller (a test's, say)
        write(1)
        before = database.atomic_depths()
        transaction.atomic().__enter__()
        write(2)
        database.end_open_transactions(before, jid="j", name="n")
        assert connection.in_atomic_block  # the outer block is still open ...
        assert seqs() == [1]  # ... rolled back to the savepoint the job's block took
    assert seqs() == [1]


def test_nothing_left_open_changes_nothing(caplog):
    write(1)
    raw = id(connection.connection)
    with caplog.at_level(logging.WARNING, "django_kiq.job"):
        database.end_open_transactions(database.atomic_depths(), jid="j", name="n")
    assert id(connection.connection) == raw and caplog.text == ""


@pg.needs_postgres
def test_a_raw_begin_is_rolled_back_by_closing_the_connection():
    before = database.atomic_depths()
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
    write(1)
    database.end_open_transactions(before, jid="j", name="n")
    assert connection.connection is None
    assert seqs() == []


@pg.needs_postgres
def test_a_transaction_aborted_by_an_error_is_rolled_back():
    before = database.atomic_depths()
    transaction.atomic().__enter__()
    write(1)
    with pytest.raises(Exception), connection.cursor() as cursor:
        cursor.execute("SELECT 1 / 0")
    database.end_open_transactions(before, jid="j", name="n")
    assert not connection.in_atomic_block
    write(2)
    assert seqs() == [2]

"""A test-only app: the models the database tests' jobs read and write (tests/test_postgres.py).

Installed in testproject/settings.py so that pytest's test database and the worker subprocesses
the tests start both have its tables; its jobs live in ``tests.dbapp.jobs``, which workers import
like any installed app's ``jobs`` module.
"""

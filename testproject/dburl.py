"""``DATABASES["default"]`` from one URL, the ``DATABASE_URL`` convention (no dependency).

testproject/settings.py reads ``KIQ_DATABASE_URL`` through :func:`parse`; the demo and the test
suite use it to run on PostgreSQL instead of the default SQLite file::

    postgres://user:password@host:5432/name?conn_max_age=60&application_name=kiq
    sqlite:////absolute/path/db.sqlite3

Query parameters ``conn_max_age`` (seconds, or ``none`` for unlimited), ``conn_health_checks`` and
``atomic_requests`` become Django's keys of those names; every other parameter goes to ``OPTIONS``,
which the PostgreSQL backend hands to libpq (``application_name``, ``sslmode``,
``connect_timeout``...).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

ENGINES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "sqlite": "django.db.backends.sqlite3",
}
_TRUE = {"1", "true", "yes", "on"}


def parse(url: str) -> dict:
    """The Django database settings dict ``url`` describes; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ENGINES:
        raise ValueError(f"database URL scheme {parts.scheme!r} is not one of {sorted(ENGINES)}")
    config: dict = {"ENGINE": ENGINES[parts.scheme], "OPTIONS": {}}
    if parts.scheme == "sqlite":
        config["NAME"] = unquote(parts.path[1:])  # sqlite:///relative, sqlite:////absolute
    else:
        config.update(NAME=unquote(parts.path.lstrip("/")), USER=unquote(parts.username or ""),
                      PASSWORD=unquote(parts.password or ""), HOST=parts.hostname or "",
                      PORT=str(parts.port or ""))
    for key, value in parse_qsl(parts.query):
        if key == "conn_max_age":
            config["CONN_MAX_AGE"] = None if value.lower() == "none" else int(value)
        elif key in ("conn_health_checks", "atomic_requests"):
            config[key.upper()] = value.lower() in _TRUE
        else:
            config["OPTIONS"][key] = value
    return config


def with_name(url: str, name: str) -> str:
    """``url`` with its database name replaced (the test run's own database, for workers)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(name)))

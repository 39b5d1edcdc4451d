"""Settings of the runnable demo project, also used by the test suite.

Environment variables (all optional) let the demo script and the tests point the project at a
Redis of their own and shorten worker timings without editing this file.
"""

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-kiq-demo-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_kiq",
    "testproject.demo",
    "tests.dbapp",  # models for the database tests (tests/test_postgres.py)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite by default; KIQ_DATABASE_URL (postgres://user@host:5432/name?conn_max_age=60, see
# testproject/dburl.py) runs the demo, or the suite's database tests (scripts/test.sh), on PostgreSQL.
if os.environ.get("KIQ_DATABASE_URL"):
    from testproject.dburl import parse as _parse_database_url

    DATABASES = {"default": _parse_database_url(os.environ["KIQ_DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("KIQ_DEMO_DB", str(BASE_DIR / "db.sqlite3")),
        }
    }

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _env_float(name):
    value = os.environ.get(name)
    return float(value) if value else None


KIQ = {
    "REDIS_URL": os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "NAMESPACE": os.environ.get("KIQ_NAMESPACE", ""),
    "IMPORTS": [m for m in os.environ.get("KIQ_IMPORTS", "").split(",") if m],
}
# Tests shorten the worker's timings through the environment of the subprocess they start.
for _key in ("PROCESS_TTL", "HEARTBEAT_INTERVAL", "POISON_LIMIT", "CONCURRENCY",
             "CHECKPOINT_INTERVAL", "DEFAULT_TIMEOUT"):
    _value = _env_float(f"KIQ_{_key}")
    if _value is not None:
        KIQ[_key] = int(_value) if _key in ("POISON_LIMIT", "CONCURRENCY") else _value
if os.environ.get("KIQ_METRICS_PORT"):  # bench/features_bench.py
    KIQ["METRICS_PORT"] = int(os.environ["KIQ_METRICS_PORT"])
if os.environ.get("KIQ_OPENTELEMETRY") == "1":  # bench/features_bench.py
    KIQ["OPENTELEMETRY"] = True
if os.environ.get("KIQ_LOG_FORMAT"):  # tests/test_logformat.py
    KIQ["LOG_FORMAT"] = os.environ["KIQ_LOG_FORMAT"]
# The demo's periodic job (docs/scheduling.md), listed on the admin's Periodic page. KIQ_PERIODIC
# (a JSON list of entries) replaces it. The test suite, benchmarks and chaos runs name their own
# job modules in KIQ_IMPORTS: their workers get no demo entry, whose runs would land among the
# jobs they count.
DEMO_PERIODIC = [{"name": "demo-minute-report", "cron": "* * * * *",
                  "job": "testproject.demo.jobs.minute_report"}]
if os.environ.get("KIQ_PERIODIC"):
    KIQ["PERIODIC"] = json.loads(os.environ["KIQ_PERIODIC"])
elif not KIQ["IMPORTS"]:
    KIQ["PERIODIC"] = DEMO_PERIODIC
if os.environ.get("KIQ_REDIS_SENTINELS"):  # JSON [[host, port], ...] (tests/test_sentinel.py)
    KIQ["REDIS_SENTINELS"] = [tuple(s) for s in json.loads(os.environ["KIQ_REDIS_SENTINELS"])]
    KIQ["REDIS_SENTINEL_MASTER"] = os.environ.get("KIQ_REDIS_SENTINEL_MASTER", "mymaster")
if os.environ.get("KIQ_REDIS_CLUSTER_URL"):  # a seed node (tests/test_cluster.py)
    KIQ["REDIS_CLUSTER_URL"] = os.environ["KIQ_REDIS_CLUSTER_URL"]

# Django's own @task API runs on django-kiq workers too (docs/django-tasks.md).
TASKS = {
    "default": {
        "BACKEND": "django_kiq.tasks.KiqBackend",
        "QUEUES": ["default", "mail"],
        "OPTIONS": {"result_ttl": 86400, "retry": 0, "enqueue_on_commit": True},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_kiq": {"handlers": ["console"], "level": os.environ.get("KIQ_LOG_LEVEL", "INFO")},
    },
}

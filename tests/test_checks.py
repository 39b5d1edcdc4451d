"""System checks: wrong settings are errors with ids; eviction policy is a warning."""


import pytest
from django.conf import settings
from django.test import override_settings

from django_kiq.checks import check_redis, check_settings
from tests.conftest import free_port, pings, private_redis


def _ids(**kiq):
    with override_settings(KIQ={**settings.KIQ, **kiq}):
        return sorted({e.id for e in check_settings()})


def test_valid_settings_pass():
    assert _ids() == []


@pytest.mark.parametrize("kiq, error_id", [
    ({"CONCURENCY": 5}, "django_kiq.E002"),
    ({"CONCURRENCY": "5"}, "django_kiq.E003"),
    ({"CONCURRENCY": 0}, "django_kiq.E003"),
    ({"TIMEOUT": True}, "django_kiq.E003"),
    ({"HEARTBEAT_INTERVAL": 40, "PROCESS_TTL": 60}, "django_kiq.E004"),
    ({"REDIS_URL": 6379}, "django_kiq.E005"),
    ({"REDIS_CACHE_ALIAS": "nope"}, "django_kiq.E006"),
    ({"QUEUES": "default"}, "django_kiq.E008"),
    ({"QUEUES": ["bad queue"]}, "django_kiq.E008"),
    ({"IMPORTS": "tests.jobs"}, "django_kiq.E009"),
    ({"TESTING": "yes"}, "django_kiq.E010"),
    ({"PERIODIC": [{"job": "tests.jobs.record", "cron": "whenever"}]}, "django_kiq.E013"),
    ({"PERIODIC": {"job": "x"}}, "django_kiq.E012"),
    ({"DEFAULT_TIMEOUT": 0}, "django_kiq.E019"),
    ({"DEFAULT_TIMEOUT": "30"}, "django_kiq.E019"),
    ({"PERIODIC": [{"cron": "* * * * *"}]}, "django_kiq.E017"),
    ({"REDIS_SENTINELS": [("127.0.0.1", 26379)]}, "django_kiq.E015"),
    ({"REDIS_SENTINELS": [("127.0.0.1", 26379)], "REDIS_SENTINEL_MASTER": "m",
      "REDIS_CACHE_ALIAS": "default"}, "django_kiq.E018"),
])
def test_bad_settings_are_errors(kiq, error_id):
    assert error_id in _ids(**kiq)


def test_each_check_id_names_one_problem():
    """Every ``_error(..., N)`` call site in checks.py uses its own N (ids are documented)."""
    import ast
    import inspect

    from django_kiq import checks

    numbers = [node.args[1].value for node in ast.walk(ast.parse(inspect.getsource(checks)))
               if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_error"]
    assert len(numbers) == len(set(numbers)), sorted(numbers)


def test_every_setting_is_declared_once():
    """DEFAULTS, the valid keys and the number rules all come from KiqSettings' fields."""
    import dataclasses

    from django_kiq.conf import DEFAULTS, NUMBERS, KiqSettings

    assert list(DEFAULTS) == [f.name.upper() for f in dataclasses.fields(KiqSettings)]
    assert set(NUMBERS) <= set(DEFAULTS)
    assert KiqSettings().concurrency == DEFAULTS["CONCURRENCY"]


def test_settings_not_a_dict():
    with override_settings(KIQ=["x"]):
        assert [e.id for e in check_settings()] == ["django_kiq.E001"]


def test_eviction_policy_warning(tmp_path):
    # A private server: the shared one's configuration is not ours to change.
    with private_redis(tmp_path, "--maxmemory-policy", "allkeys-lru") as (url, client):
        with override_settings(KIQ={**settings.KIQ, "REDIS_URL": url}):
            assert [w.id for w in check_redis()] == ["django_kiq.W001"]
            client.config_set("maxmemory-policy", "noeviction")
            assert check_redis() == []


# Other test modules start private servers with these names.
_free_port, _pings = free_port, pings


def test_redis_unreachable_warning(redis_url):
    with override_settings(KIQ={**settings.KIQ, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        assert [w.id for w in check_redis()] == ["django_kiq.W002"]

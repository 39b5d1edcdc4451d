"""System checks: settings of the wrong shape are Errors, Redis eviction is a Warning.

Registered from ``AppConfig.ready()``. Settings checks need no Redis; the Redis check
(``django_kiq.W001``/``W002``) is tagged ``database`` so it runs with ``check --database`` and at
worker start-up, never on every ``manage.py`` command.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit
from typing import TYPE_CHECKING, Any

from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS, NUMBERS, raw_settings
from .registry import QUEUE_NAME, validate_cron

if TYPE_CHECKING:
    from django.apps import AppConfig

LISTS = ("IMPORTS", "ERROR_HANDLERS", "DEATH_HANDLERS", "CLIENT_MIDDLEWARE", "SERVER_MIDDLEWARE")


def _error(msg: str, n: int, hint: str | None = None) -> Error:
    return Error(msg, hint=hint, id=f"django_kiq.E{n:03d}")


@register("django_kiq")
def check_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list:
    from django.conf import settings

    user = getattr(settings, "KIQ", {})
    if not isinstance(user, dict):
        return [_error("settings.KIQ must be a dict.", 1)]
    errors = []
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        errors.append(_error(f"Unknown KIQ setting(s): {', '.join(sorted(unknown))}.", 2,
                             hint=f"Valid keys: {', '.join(sorted(DEFAULTS))}."))
    raw = raw_settings()
    errors += (_check_numbers(raw) + _check_shapes(raw) + _check_periodic(raw)
               + _check_sentinel(raw) + _check_observability(raw) + _check_processes(raw))
    errors += _check_cluster(raw)
    return errors


def _check_numbers(raw: dict) -> list:
    errors = []
    for key, (types, minimum) in NUMBERS.items():
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, types) or value < minimum:
            errors.append(_error(f"KIQ['{key}'] must be a number >= {minimum}, not {value!r}.", 3))
    if (not errors and raw["HEARTBEAT_INTERVAL"] * 2 > raw["PROCESS_TTL"]):
        errors.append(_error("KIQ['PROCESS_TTL'] must be at least twice HEARTBEAT_INTERVAL, or "
                             "live workers would be taken for dead.", 4))
    return errors


def _check_shapes(raw: dict) -> list:
    errors = []
    if not isinstance(raw["REDIS_URL"], str) or "://" not in raw["REDIS_URL"]:
        errors.append(_error(f"KIQ['REDIS_URL'] must be a redis:// URL, not {raw['REDIS_URL']!r}.",
                             5))
    alias = raw["REDIS_CACHE_ALIAS"]
    if alias is not None:
        from django.conf import settings

        if alias not in getattr(settings, "CACHES", {}):
            errors.append(_error(f"KIQ['REDIS_CACHE_ALIAS'] {alias!r} is not in CACHES.", 6))
    if not isinstance(raw["NAMESPACE"], str):
        errors.append(_error("KIQ['NAMESPACE'] must be a string.", 7))
    queues = raw["QUEUES"]
    if isinstance(queues, str) or not isinstance(queues, (list, tuple)) or not all(
            isinstance(q, str) and QUEUE_NAME.match(q.partition(",")[0]) for q in queues):
        errors.append(_error(f"KIQ['QUEUES'] must be a list of queue names, not {queues!r}.", 8,
                             hint="Queue names use letters, digits, '_', '.', '-'."))
    for key in LISTS:
        value = raw[key]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            errors.append(_error(f"KIQ['{key}'] must be a list of dotted paths.", 9))
    if raw["TESTING"] not in (None, "inline", "fake"):
        errors.append(_error("KIQ['TESTING'] must be None, 'inline' or 'fake'.", 10))
    if not isinstance(raw["ENQUEUE_ON_COMMIT"], bool):
        errors.append(_error("KIQ['ENQUEUE_ON_COMMIT'] must be True or False.", 11))
    timeout = raw["DEFAULT_TIMEOUT"]
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < float("inf")):
        errors.append(_error(f"KIQ['DEFAULT_TIMEOUT'] must be None or seconds > 0, not "
                             f"{timeout!r}.", 19))
    ttl = raw["RESULT_TTL"]  # BATCH_TTL is a number setting: E003
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
        errors.append(_error(f"KIQ['RESULT_TTL'] must be None or whole seconds >= 1, not "
                             f"{ttl!r}.", 29, hint="docs/workflows.md"))
    return errors


def _check_periodic(raw: dict) -> list:
    entries = raw["PERIODIC"]
    if not isinstance(entries, (list, tuple)):
        return [_error("KIQ['PERIODIC'] must be a list of dicts.", 12)]
    errors = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("job"), str):
            errors.append(_error(f"KIQ['PERIODIC'][{i}] needs a 'job' name and a 'cron'.", 17))
            continue
        try:
            validate_cron(entry.get("cron"), entry.get("timezone"), where=f"PERIODIC[{i}]")
        except ValueError as exc:
            errors.append(_error(str(exc), 13))
    return errors


def _check_sentinel(raw: dict) -> list:
    sentinels, master = raw["REDIS_SENTINELS"], raw["REDIS_SENTINEL_MASTER"]
    errors = []
    if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, (list, tuple)) or not all(
            isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], str)
            and isinstance(s[1], int) and not isinstance(s[1], bool) for s in sentinels):
        errors.append(_error(f"KIQ['REDIS_SENTINELS'] must be a list of (host, port) pairs, not "
                             f"{sentinels!r}.", 14, hint='e.g. [("10.0.0.1", 26379)]'))
    elif sentinels and (not isinstance(master, str) or not master):
        errors.append(_error("KIQ['REDIS_SENTINEL_MASTER'] must name the master the sentinels "
                             "monitor when KIQ['REDIS_SENTINELS'] is set.", 15))
    elif sentinels and raw["REDIS_CACHE_ALIAS"] is not None:
        errors.append(_error("KIQ['REDIS_SENTINELS'] and KIQ['REDIS_CACHE_ALIAS'] exclude each "
                             "other.", 18, hint="Configure Sentinel in the cache instead."))
    if not isinstance(raw["REDIS_SENTINEL_OPTIONS"], dict):
        errors.append(_error("KIQ['REDIS_SENTINEL_OPTIONS'] must be a dict of connection "
                             "arguments for the sentinels.", 16))
    return errors


def _check_cluster(raw: dict) -> list:
    """Redis Cluster settings (docs/scaling.md "Redis Cluster")."""
    url, nodes = raw["REDIS_CLUSTER_URL"], raw["REDIS_CLUSTER_NODES"]
    errors = []
    if url is not None and (not isinstance(url, str) or not url.startswith(("redis://",
                                                                            "rediss://"))):
        errors.append(_error(f"KIQ['REDIS_CLUSTER_URL'] must be None or the redis:// URL of a "
                             f"cluster node, not {url!r}.", 40))
    elif url and urlsplit(url).path.strip("/") not in ("", "0"):
        errors.append(_error("KIQ['REDIS_CLUSTER_URL'] names a database other than 0: Redis "
                             "Cluster has only database 0.", 43))
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, (list, tuple)) or not all(
            isinstance(n, (list, tuple)) and len(n) == 2 and isinstance(n[0], str)
            and isinstance(n[1], int) and not isinstance(n[1], bool) for n in nodes):
        errors.append(_error(f"KIQ['REDIS_CLUSTER_NODES'] must be a list of (host, port) pairs, "
                             f"not {nodes!r}.", 41, hint='e.g. [("10.0.0.1", 7000)]'))
    elif (url or nodes) and (raw["REDIS_SENTINELS"] or raw["REDIS_CACHE_ALIAS"] is not None):
        errors.append(_error("KIQ['REDIS_CLUSTER_URL'] / REDIS_CLUSTER_NODES exclude "
                             "REDIS_SENTINELS and REDIS_CACHE_ALIAS.", 42,
                             hint="Redis Cluster fails over by itself: no Sentinel is needed."))
    return errors


def _check_observability(raw: dict) -> list:
    """Metrics, tracing and log format settings (docs/observability.md)."""
    errors = []
    port = raw["METRICS_PORT"]
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 < port < 65536):
        errors.append(_error(f"KIQ['METRICS_PORT'] must be None or a TCP port (1-65535), not "
                             f"{port!r}.", 25))
    if not isinstance(raw["METRICS_TOKEN"], str):
        errors.append(_error("KIQ['METRICS_TOKEN'] must be a string ('' for none).", 26))
    if not isinstance(raw["OPENTELEMETRY"], bool):
        errors.append(_error("KIQ['OPENTELEMETRY'] must be True or False.", 27))
    if raw["LOG_FORMAT"] not in ("text", "json"):
        errors.append(_error(f"KIQ['LOG_FORMAT'] must be 'text' or 'json', not "
                             f"{raw['LOG_FORMAT']!r}.", 28))
    return errors


def _check_processes(raw: dict) -> list:
    """``kiq_worker --processes`` and its recycling limits (docs/scaling.md)."""
    errors = []
    processes = raw["PROCESSES"]
    if processes != "auto" and (type(processes) is not int or processes < 1):
        errors.append(_error(f"KIQ['PROCESSES'] must be a whole number >= 1 or 'auto', not "
                             f"{processes!r}.", 30))
    rss, jobs = raw["MAX_RSS"], raw["MAX_JOBS"]
    if rss is not None and (type(rss) is not int or rss < 1):
        errors.append(_error(f"KIQ['MAX_RSS'] must be None or megabytes >= 1, not {rss!r}.", 31,
                             hint="docs/scaling.md"))
    if jobs is not None and (type(jobs) is not int or jobs < 1):
        errors.append(_error(f"KIQ['MAX_JOBS'] must be None or a whole number >= 1, not "
                             f"{jobs!r}.", 32, hint="docs/scaling.md"))
    return errors


@register(Tags.database)
def check_redis(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list:
    from . import storage

    try:
        policy = storage.get_default().config_get("maxmemory-policy").get("maxmemory-policy")
    except storage.RedisError as exc:
        return [Warning(f"Redis is not reachable: {exc}", id="django_kiq.W002")]
    if policy and policy != "noeviction":
        return [Warning(f"Redis maxmemory-policy is {policy!r}: Redis may evict job data.",
                        hint="Set maxmemory-policy to noeviction.", id="django_kiq.W001")]
    return []

"""The one settings object: ``settings.KIQ`` read once, lazily, into a frozen dataclass.

Nothing reads ``settings.KIQ`` at import time. ``get_settings()`` builds the object on first use
and caches it; a ``setting_changed`` receiver (connected in ``apps.py``) drops the cache so
``override_settings(KIQ=...)`` works in tests. Components receive the values they need as
arguments; only the entry points (client, worker command, admin, checks) call ``get_settings()``.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

DEFAULTS: dict[str, Any] = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "REDIS_CACHE_ALIAS": None,
    "REDIS_OPTIONS": {},
    # Redis Sentinel: [(host, port), ...] and the master's name; REDIS_URL then gives only the
    # database number and credentials. REDIS_SENTINEL_OPTIONS: connection arguments for the
    # sentinels themselves (e.g. their password).
    "REDIS_SENTINELS": [],
    "REDIS_SENTINEL_MASTER": None,
    "REDIS_SENTINEL_OPTIONS": {},
    "NAMESPACE": "",
    "CONCURRENCY": 5,
    "QUEUES": ["default"],
    "TIMEOUT": 25.0,
    "PROCESS_TTL": 60.0,
    "HEARTBEAT_INTERVAL": 10.0,
    "POISON_LIMIT": 3,
    "ENQUEUE_ON_COMMIT": True,
    "IMPORTS": [],
    "MAX_RETRIES": 25,
    "DEAD_MAX_JOBS": 10_000,
    "DEAD_TIMEOUT": 180 * 24 * 3600,
    "ERROR_HANDLERS": [],
    "DEATH_HANDLERS": [],
    "CLIENT_MIDDLEWARE": [],
    "SERVER_MIDDLEWARE": [],
    "PERIODIC": [],
    "TESTING": None,
    "POLL_INTERVAL_MAX": 0.5,
    "MAX_PAYLOAD_BYTES": 1024 * 1024,
    "TAG": "",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class KiqSettings:
    """Validated-enough values; ``checks.py`` reports what is wrong in detail."""

    redis_url: str
    redis_cache_alias: str | None
    redis_options: dict = field(default_factory=dict)
    redis_sentinels: tuple = ()
    redis_sentinel_master: str | None = None
    redis_sentinel_options: dict = field(default_factory=dict)
    namespace: str
    concurrency: int
    queues: tuple[str, ...]
    timeout: float
    process_ttl: float
    heartbeat_interval: float
    poison_limit: int
    enqueue_on_commit: bool
    imports: tuple[str, ...]
    max_retries: int
    dead_max_jobs: int
    dead_timeout: float
    error_handlers: tuple[str, ...]
    death_handlers: tuple[str, ...]
    client_middleware: tuple[str, ...]
    server_middleware: tuple[str, ...]
    periodic: tuple[dict, ...]
    testing: str | None
    poll_interval_max: float
    max_payload_bytes: int
    tag: str

    def replace(self, **changes: Any) -> "KiqSettings":
        return dataclasses.replace(self, **changes)


_lock = threading.Lock()
_cached: KiqSettings | None = None


def raw_settings() -> dict[str, Any]:
    """``settings.KIQ`` merged over the defaults, unvalidated (the system checks read this)."""
    from django.conf import settings

    user = getattr(settings, "KIQ", None) or {}
    if not isinstance(user, dict):
        user = {}
    return {**DEFAULTS, **user}


def _build(raw: dict[str, Any]) -> KiqSettings:
    tuples = ("REDIS_SENTINELS", "QUEUES", "IMPORTS", "ERROR_HANDLERS", "DEATH_HANDLERS",
              "CLIENT_MIDDLEWARE", "SERVER_MIDDLEWARE", "PERIODIC")
    values = {key.lower(): (tuple(raw[key]) if key in tuples else raw[key]) for key in DEFAULTS}
    return KiqSettings(**values)


def get_settings() -> KiqSettings:
    global _cached
    current = _cached
    if current is None:
        with _lock:
            if _cached is None:
                _cached = _build(raw_settings())
            current = _cached
    return current


def reset_settings(**kwargs: Any) -> None:
    """``setting_changed`` receiver: forget the cached object (and the shared connection)."""
    global _cached
    if kwargs.get("setting") not in (None, "KIQ", "CACHES"):
        return
    with _lock:
        _cached = None
    from django_kiq import storage

    storage.reset_default()

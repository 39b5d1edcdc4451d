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

def _setting(default: Any, *, minimum: float | None = None, number: type | tuple = (),
             as_tuple: bool = False) -> Any:
    """Declare one setting: its default and, for numbers, the smallest valid value.

    Each ``KIQ`` key is declared once, here, as a field of :class:`KiqSettings`; the defaults,
    the list of valid keys and the system checks' number rules are all derived from it.
    """
    metadata = {"minimum": minimum, "number": number, "as_tuple": as_tuple}
    if isinstance(default, (dict, list)):
        factory = (lambda: tuple(default)) if as_tuple else (lambda: type(default)(default))
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_FLOAT = (int, float)


@dataclass(frozen=True, slots=True, kw_only=True)
class KiqSettings:
    """``settings.KIQ``, one field per key (the key is the field name upper-cased).

    Values are validated enough to run; ``checks.py`` reports what is wrong in detail.
    """

    redis_url: str = _setting("redis://127.0.0.1:6379/0")
    redis_cache_alias: str | None = _setting(None)
    redis_options: dict = _setting({})
    # Redis Sentinel: [(host, port), ...] and the master's name; REDIS_URL then gives only the
    # database number and credentials. REDIS_SENTINEL_OPTIONS: connection arguments for the
    # sentinels themselves (e.g. their password).
    redis_sentinels: tuple = _setting([], as_tuple=True)
    redis_sentinel_master: str | None = _setting(None)
    redis_sentinel_options: dict = _setting({})
    # Redis Cluster (docs/scaling.md "Redis Cluster"): a seed node's URL, or [(host, port), ...]
    # seed nodes; either switches to the cluster key layout (storage/keys.py ClusterKeys).
    redis_cluster_url: str | None = _setting(None)
    redis_cluster_nodes: tuple = _setting([], as_tuple=True)
    namespace: str = _setting("")
    concurrency: int = _setting(5, minimum=1, number=int)
    # Async jobs at once on the worker's event loop (docs/jobs.md "Async"); 0: on the threads.
    async_concurrency: int = _setting(100, minimum=0, number=int)
    queues: tuple[str, ...] = _setting(["default"], as_tuple=True)
    timeout: float = _setting(25.0, minimum=0, number=_FLOAT)
    process_ttl: float = _setting(60.0, minimum=1, number=_FLOAT)
    heartbeat_interval: float = _setting(10.0, minimum=0.01, number=_FLOAT)
    poison_limit: int = _setting(3, minimum=1, number=int)
    enqueue_on_commit: bool = _setting(True)
    imports: tuple[str, ...] = _setting([], as_tuple=True)
    max_retries: int = _setting(25, minimum=0, number=int)
    dead_max_jobs: int = _setting(10_000, minimum=1, number=int)
    dead_timeout: float = _setting(180 * 24 * 3600, minimum=1, number=_FLOAT)
    error_handlers: tuple[str, ...] = _setting([], as_tuple=True)
    death_handlers: tuple[str, ...] = _setting([], as_tuple=True)
    client_middleware: tuple[str, ...] = _setting([], as_tuple=True)
    server_middleware: tuple[str, ...] = _setting([], as_tuple=True)
    periodic: tuple[dict, ...] = _setting([], as_tuple=True)
    testing: str | None = _setting(None)
    poll_interval_max: float = _setting(0.5, minimum=0.01, number=_FLOAT)
    max_payload_bytes: int = _setting(1024 * 1024, minimum=1, number=int)
    tag: str = _setting("")
    # kiq_worker --processes (docs/scaling.md): worker processes under one supervisor (1: none,
    # "auto": one per usable core), and when it replaces one: resident MB, jobs done (None: never).
    processes: int | str = _setting(1)
    max_rss: int | None = _setting(None)
    max_jobs: int | None = _setting(None)
    # Execution control (docs/execution.md).
    default_timeout: float | None = _setting(None)
    checkpoint_interval: float = _setting(5.0, minimum=0.01, number=_FLOAT)
    # Workflows (docs/workflows.md): results kept for every job (None: only result_ttl jobs),
    # and how long a batch's data lives after it completed.
    result_ttl: int | None = _setting(None)
    batch_ttl: int = _setting(30 * 24 * 3600, minimum=1, number=int)
    # Observability (docs/observability.md): each is off until asked for.
    metrics_port: int | None = _setting(None)
    metrics_token: str = _setting("")
    opentelemetry: bool = _setting(False)
    log_format: str = _setting("text")

    def replace(self, **changes: Any) -> "KiqSettings":
        return dataclasses.replace(self, **changes)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return list(value) if isinstance(value, tuple) else value
    return f.default


SETTINGS: tuple[dataclasses.Field, ...] = dataclasses.fields(KiqSettings)
#: Every valid ``KIQ`` key and its default, derived from :class:`KiqSettings`.
DEFAULTS: dict[str, Any] = {f.name.upper(): _default_of(f) for f in SETTINGS}
#: Number settings: key -> (accepted types, smallest valid value), for the system checks.
NUMBERS: dict[str, tuple[type[float] | tuple[type[float], ...], float]] = {
    f.name.upper(): (f.metadata["number"], f.metadata["minimum"])
    for f in SETTINGS if f.metadata["minimum"] is not None}


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
    values: dict[str, Any] = {f.name: (tuple(raw[f.name.upper()]) if f.metadata["as_tuple"]
                                       else raw[f.name.upper()]) for f in SETTINGS}
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

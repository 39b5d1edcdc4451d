"""``@job``: job definitions and the name -> definition registry.

Decoration runs at import time in every process (web, worker, shell) and fails fast on a bad
option, a duplicate name, or a function the worker could not find by module path (nested,
lambda). The worker only ever runs names registered here: it never imports a name found in
Redis. Enqueueing lives in ``client.py``; a :class:`Job` only forwards to it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypedDict, TypeVar, Unpack,
                    cast, overload)

if TYPE_CHECKING:
    from .canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")

_registry: dict[str, "JobDefinition"] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """Per-job options; every field has a settings-driven or Sidekiq default."""

    queue: str = "default"
    retry: bool | int = True
    backtrace: bool | int = False
    dead: bool = True
    retry_in: Callable | None = None
    on_exhausted: Callable | None = None
    retry_queue: str | None = None
    tags: tuple[str, ...] = ()
    cron: str | None = None
    timezone: str | None = None
    # Execution control (docs/execution.md); each is off until set.
    timeout: float | None = None
    expires_in: float | None = None
    unique_for: float | None = None
    unique_until: str = "success"
    unique_key: Callable | None = None
    unique_conflict: str = "drop"
    iterable: bool = False
    concurrency: int | None = None  # at most this many run at once, everywhere (docs/limits.md)
    # Workflows (docs/workflows.md): keep the job's status and return value this many seconds.
    result_ttl: int | None = None

    def payload_fields(self) -> dict[str, Any]:
        """The options that travel in the job hash (Sidekiq field names, ``kiq_`` for ours).

        Per-enqueue fields that depend on the time or the arguments (``kiq_expires_at``,
        ``kiq_unique``) are added by the client.
        """
        out: dict[str, Any] = {"retry": self.retry}
        if self.backtrace:
            out["backtrace"] = self.backtrace
        if not self.dead:
            out["dead"] = False
        if self.retry_queue:
            out["retry_queue"] = self.retry_queue
        if self.tags:
            out["tags"] = list(self.tags)
        if self.timeout is not None:
            out["kiq_timeout"] = self.timeout
        if self.unique_for is not None and self.unique_until == "start":
            out["kiq_unique_until"] = "start"
        if self.iterable:
            out["kiq_iterable"] = True
        if self.result_ttl is not None:
            out["kiq_result_ttl"] = self.result_ttl
        return out


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(JobOptions)) | {"name"}
SET_OPTION_NAMES = frozenset({"queue", "retry", "backtrace", "dead", "retry_queue", "tags",
                              "timeout", "expires_in", "result_ttl"})
UNIQUE_UNTIL = ("success", "start")
UNIQUE_CONFLICT = ("drop", "raise")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDefinition:
    name: str
    func: Callable
    options: JobOptions = field(default_factory=JobOptions)
    is_async: bool = False


def validate_options(options: dict[str, Any], *, where: str) -> None:
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise TypeError(f"{where}: unknown option(s) {sorted(unknown)}; "
                        f"valid options are {sorted(OPTION_NAMES)}")
    queue = options.get("queue", "default")
    for key in ("queue", "retry_queue"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not QUEUE_NAME.match(value)):
            raise ValueError(f"{where}: {key}={value!r} is not a valid queue name "
                             "(letters, digits, '_', '.', '-'; at most 128 characters)")
    retry = options.get("retry", True)
    if not isinstance(retry, (bool, int)) or (not isinstance(retry, bool) and retry < 0):
        raise ValueError(f"{where}: retry must be True, False or an int >= 0, not {retry!r}")
    backtrace = options.get("backtrace", False)
    if not isinstance(backtrace, (bool, int)) or backtrace is not True and backtrace < 0:
        raise ValueError(f"{where}: backtrace must be a bool or a line count, not {backtrace!r}")
    if not isinstance(options.get("dead", True), bool):
        raise ValueError(f"{where}: dead must be a bool")
    for key, params in HOOK_PARAMS.items():
        if options.get(key) is not None:
            _check_hook(options[key], key, params, where)
    tags = options.get("tags", ())
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise TypeError(f"{where}: tags must be a list of strings")
    if options.get("cron") is not None:
        validate_cron(options["cron"], options.get("timezone"), where=where)
    _validate_execution(options, where)
    del queue


#: The hooks a job may name, and the positional arguments the worker calls each with.
HOOK_PARAMS = {"retry_in": "count, exc, job", "on_exhausted": "job, exc"}


def _check_hook(hook: Any, key: str, params: str, where: str) -> None:
    """A hook must take the worker's arguments: a wrong arity found only at a failure would
    quietly fall back to the default (retry_in) or log and do nothing (on_exhausted)."""
    if not callable(hook):
        raise TypeError(f"{where}: {key} must be callable")
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return  # some builtins have no signature to check; they are called as they are
    try:
        signature.bind(*params.split(", "))
    except TypeError:
        raise TypeError(f"{where}: {key} is called as {key}({params}); "
                        f"{getattr(hook, '__qualname__', hook)!r} takes {signature}") from None


def _positive(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value > 0 and value != float("inf"))


def _validate_execution(options: dict[str, Any], where: str) -> None:
    for key in ("timeout", "expires_in", "unique_for"):
        value = options.get(key)
        if value is not None and not _positive(value):
            raise ValueError(f"{where}: {key} must be a number of seconds > 0, not {value!r}")
    if options.get("unique_until", "success") not in UNIQUE_UNTIL:
        raise ValueError(f"{where}: unique_until must be one of {UNIQUE_UNTIL}, "
                         f"not {options['unique_until']!r}")
    if options.get("unique_conflict", "drop") not in UNIQUE_CONFLICT:
        raise ValueError(f"{where}: unique_conflict must be one of {UNIQUE_CONFLICT}, "
                         f"not {options['unique_conflict']!r}")
    if options.get("unique_key") is not None and not callable(options["unique_key"]):
        raise TypeError(f"{where}: unique_key must be callable(*args, **kwargs) -> str")
    uses_unique = any(k in options for k in ("unique_until", "unique_key", "unique_conflict"))
    if uses_unique and options.get("unique_for") is None:
        raise TypeError(f"{where}: unique_until/unique_key/unique_conflict need unique_for")
    if not isinstance(options.get("iterable", False), bool):
        raise TypeError(f"{where}: iterable must be True or False")
    size = options.get("concurrency")
    if size is not None and (type(size) is not int or size < 1):
        raise ValueError(f"{where}: concurrency must be a whole number >= 1, not {size!r}")
    ttl = options.get("result_ttl")
    if ttl is not None and (type(ttl) is not int or ttl < 1):
        raise ValueError(f"{where}: result_ttl must be a whole number of seconds >= 1, "
                         f"not {ttl!r}")


def validate_cron(expression: object, timezone: str | None, *, where: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from .periodic import is_valid_cron

    if not is_valid_cron(expression):
        raise ValueError(f"{where}: {expression!r} is not a valid cron expression (5 fields, "
                         "or 6 with seconds first, or @hourly/@daily/...)")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"{where}: unknown timezone {timezone!r}") from None


def _check_function(func: Callable) -> None:
    if not inspect.isfunction(func):
        raise TypeError(f"@job decorates plain functions, not {type(func).__name__}")
    if func.__name__ == "<lambda>":
        raise TypeError("@job cannot decorate a lambda: the worker finds jobs by name")
    if "<locals>" in func.__qualname__:
        raise TypeError(f"@job cannot decorate {func.__qualname__}: a nested function is not "
                        "importable; define it at module level")


def _check_iterable(func: Callable, where: str) -> None:
    if not inspect.isgeneratorfunction(func):
        raise TypeError(f"{where}: iterable=True needs a generator function (one that yields "
                        "a cursor after each item)")
    params = inspect.signature(func).parameters
    cursor = params.get("cursor")
    if cursor is None or cursor.kind not in (inspect.Parameter.KEYWORD_ONLY,
                                             inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise TypeError(f"{where}: an iterable job takes a keyword argument 'cursor' (None on "
                        "the first run, then the last cursor it yielded)")


def register(func: Callable, options: dict[str, Any]) -> JobDefinition:
    _check_function(func)
    where = f"@job on {func.__module__}.{func.__qualname__}"
    validate_options(options, where=where)
    if options.get("iterable"):
        _check_iterable(func, where)
    name = options.pop("name", None) or f"{func.__module__}.{func.__qualname__}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string")
    if "tags" in options:
        options["tags"] = tuple(options["tags"])
    definition = JobDefinition(name=name, func=func, options=JobOptions(**options),
                               is_async=inspect.iscoroutinefunction(func))
    add(definition)
    return definition


def add(definition: JobDefinition) -> None:
    """Register a definition; the same function registered again (a reload) replaces itself."""
    with _lock:
        existing = _registry.get(definition.name)
        if existing is not None and not _same_function(existing.func, definition.func):
            raise ValueError(
                f"job name {definition.name!r} is already registered by "
                f"{existing.func.__module__}.{existing.func.__qualname__}")
        _registry[definition.name] = definition


def _same_function(a: Callable, b: Callable) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def get(name: str) -> JobDefinition | None:
    return _registry.get(name)


def names() -> list[str]:
    return sorted(_registry)


def all_definitions() -> list[JobDefinition]:
    return [_registry[n] for n in sorted(_registry)]


def unregister(name: str) -> None:
    """Remove a name (for tests that register throwaway jobs)."""
    with _lock:
        _registry.pop(name, None)


class SetOptions(TypedDict, total=False):
    """The options ``Job.set()`` accepts (a type checker reports any other keyword)."""

    queue: str
    retry: bool | int
    backtrace: bool | int
    dead: bool
    retry_queue: str | None
    tags: Sequence[str]
    timeout: float | None
    expires_in: float | None
    result_ttl: int | None


class JobDecoratorOptions(SetOptions, total=False):
    """The options ``@job(...)`` accepts: those of ``set()`` plus the registration-only ones."""

    name: str
    retry_in: Callable[..., Any] | None
    on_exhausted: Callable[..., Any] | None
    cron: str | None
    timezone: str | None
    unique_for: float | None
    unique_until: Literal["success", "start"]
    unique_key: Callable[..., str] | None
    unique_conflict: Literal["drop", "raise"]
    iterable: bool


class Job(Generic[P, R]):
    """What ``@job`` returns: still callable as the plain function, plus enqueue methods.

    Generic in the function's parameters ``P`` and return type ``R``, so a type checker checks
    ``enqueue(...)``, ``enqueue_in(delay, ...)``, ``aenqueue(...)`` and the rest against the
    function's own signature, and ``job(...)`` called directly returns ``R`` (a coroutine for an
    ``async def`` job). A method that takes the job's arguments is typed ``*args: P.args,
    **kwargs: P.kwargs``; its own parameters (``delay``, ``when``) are positional-only so they
    never collide with a job parameter of the same name.
    """

    def __init__(self, definition: JobDefinition, overrides: dict[str, Any] | None = None):
        self.definition = definition
        self._overrides = overrides or {}
        self.__wrapped__ = definition.func
        self.__doc__ = definition.func.__doc__
        self.__name__ = definition.func.__name__
        self.__qualname__ = definition.func.__qualname__
        self.__module__ = definition.func.__module__

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def options(self) -> JobOptions:
        if not self._overrides:
            return self.definition.options
        return dataclasses.replace(self.definition.options, **self._overrides)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self.definition.func(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<Job {self.name}>"

    def set(self, **overrides: Unpack[SetOptions]) -> "Job[P, R]":
        """A copy with per-call options: ``job.set(queue="critical", retry=False).enqueue(...)``."""
        options: dict[str, Any] = dict(overrides)
        unknown = set(options) - SET_OPTION_NAMES
        if unknown:
            raise TypeError(f"{self.name}.set(): unknown option(s) {sorted(unknown)}; "
                            f"valid options are {sorted(SET_OPTION_NAMES)}")
        validate_options(options, where=f"{self.name}.set()")
        if "tags" in options:
            options["tags"] = tuple(options["tags"])
        return Job(self.definition, {**self._overrides, **options})

    # -- enqueueing (client.py); None when a middleware or a unique lock dropped the job ----------

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        from . import client

        return client.enqueue(self, args, kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        """The same as :meth:`enqueue` (Sidekiq's and Celery's name)."""
        from . import client

        return client.enqueue(self, args, kwargs)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> "Signature":
        """A signature: this call described as data (``.set(...)``, ``.enqueue()``); chains,
        groups and batch callbacks take them. Arguments are checked now, as ``enqueue`` does."""
        from .canvas import Signature

        return Signature.of(self, args, kwargs)

    def enqueue_in(self, delay: float | dt.timedelta, /, *args: P.args,
                   **kwargs: P.kwargs) -> str | None:
        from . import client

        return client.enqueue_in(self, delay, args, kwargs)

    def enqueue_at(self, when: dt.datetime | float, /, *args: P.args,
                   **kwargs: P.kwargs) -> str | None:
        from . import client

        return client.enqueue_at(self, when, args, kwargs)

    def enqueue_many(self, arg_list: Iterable[Sequence[Any]]) -> list[str | None]:
        """One job per tuple of positional arguments, in one round trip (not checked against
        ``P``: a type checker cannot spell "a tuple of P's positional arguments")."""
        from . import client

        return client.enqueue_many(self, arg_list)

    # -- the same on redis-py's asyncio client (aclient.py) ------------------------------------

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        from . import aclient

        return await aclient.aenqueue(self, args, kwargs)

    async def aenqueue_in(self, delay: float | dt.timedelta, /, *args: P.args,
                          **kwargs: P.kwargs) -> str | None:
        from . import aclient

        return await aclient.aenqueue_in(self, delay, args, kwargs)

    async def aenqueue_at(self, when: dt.datetime | float, /, *args: P.args,
                          **kwargs: P.kwargs) -> str | None:
        from . import aclient

        return await aclient.aenqueue_at(self, when, args, kwargs)

    async def aenqueue_many(self, arg_list: Iterable[Sequence[Any]]) -> list[str | None]:
        from . import aclient

        return await aclient.aenqueue_many(self, arg_list)


@overload
def job(func: Callable[P, R], /) -> Job[P, R]: ...


@overload
def job(**options: Unpack[JobDecoratorOptions]) -> Callable[[Callable[P, R]], Job[P, R]]: ...


def job(func: Callable[..., Any] | None = None, /,
        **options: Any) -> Job[Any, Any] | Callable[[Callable[..., Any]], Job[Any, Any]]:
    """Register a module-level function as a job: ``@job`` or ``@job(queue=..., retry=...)``."""
    if func is not None:
        if options:
            raise TypeError("use @job(...) with keyword options, not @job(func, ...)")
        return Job(register(func, {}))

    validate_options(options, where="@job(...)")  # fail before the function is even defined

    def decorate(f: Callable[..., Any]) -> Job[Any, Any]:
        return Job(register(f, dict(options)))

    return decorate

"""``KiqBackend``: Django's ``django.tasks`` API running on django-kiq workers.

A thin adapter: it translates between Django's ``Task``/``TaskResult`` and django-kiq's job hash
and result record, and holds no queueing logic of its own. A task's result is the same record
``@job(result_ttl=...)`` jobs keep (``django_kiq.results``, docs/workflows.md): the worker writes
its start, its end, its value or error, and puts it back to "queued" when it is pushed back, as
for any job; the backend adds only what Django's ``TaskResult`` has beyond that (the task, its
arguments and options, every attempt's error and worker id).

- Enqueue (caller's thread) builds an ordinary job hash whose ``class`` is the registered shim
  job :data:`SHIM_NAME` (``display_class`` is the task's module path, so the admin shows the
  task) and hands it to ``client.submit_payloads``: client middleware, the size check, the
  testing modes and enqueue-on-commit apply as for ``@job``. The writer stores the result record
  and the job in one atomic call, placing the job in its queue by priority
  (``storage.push_task``) or in the schedule set when deferred (``storage.schedule_task``).
- The worker runs the shim like any job that keeps its result (processor thread). The shim
  finds the task among the modules already imported at start-up (never imports a path read
  from Redis), counts the attempt in the record, calls the task, records a failure's error,
  sends Django's signals, and returns the value or re-raises the failure: the job's settle step
  records the final status and value, and django-kiq's retry machinery decides what a failure
  means. A task cut off by a stopping worker reads READY again as its job is pushed back.

Lifecycle: Django builds one backend per alias and thread, on first use, often at import time
(``@task``): construction only stores the configuration. Redis is reached at call time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from traceback import format_exception
from types import SimpleNamespace
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import Error
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from . import client, payload, storage
from .conf import KiqSettings
from .exceptions import EnqueueError, UnknownJob
from .registry import QUEUE_NAME, job

logger = logging.getLogger("django_kiq.tasks")
SHIM_NAME = "django_kiq.tasks.run_task"
OPTION_DEFAULTS: dict[str, Any] = {"result_ttl": 86_400, "retry": 0, "enqueue_on_commit": True}


class UnknownTask(UnknownJob):
    """The job names a task that no module loaded by this worker defines."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KiqTask(Task):
    """A ``Task`` with django-kiq's retry count: ``@task(retry=3)`` (Django 6.1 passes extra
    decorator keywords to the backend's ``task_class``). ``None`` means ``OPTIONS["retry"]``."""

    retry: int | None = None

    def using(self, *, priority: int | None = None, queue_name: str | None = None,
              run_after: datetime | timedelta | None = None, backend: str | None = None,
              retry: int | None = None) -> "KiqTask":
        # Explicit base call: zero-argument super() does not work in a slotted dataclass.
        changed = Task.using(self, priority=priority, queue_name=queue_name,
                             run_after=run_after, backend=backend)
        return changed if retry is None else dataclasses.replace(changed, retry=retry)


class KiqBackend(BaseTaskBackend):
    task_class = KiqTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def _option(self, name: str) -> Any:
        return self.options.get(name, OPTION_DEFAULTS[name])

    @property
    def result_ttl(self) -> int:
        return self._option("result_ttl")

    # -- validation ----------------------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        if isinstance(task.run_after, timedelta):
            # Core wants an aware datetime under USE_TZ; judge the moment the delay resolves to
            # (the delay itself counts from enqueue time, see enqueue()).
            task = SimpleNamespace(func=task.func, takes_context=task.takes_context,
                                   priority=task.priority, queue_name=task.queue_name,
                                   run_after=timezone.now() + task.run_after,
                                   retry=getattr(task, "retry", None))
        super().validate_task(task)
        count = getattr(task, "retry", None)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):
            raise InvalidTask(f"retry must be a whole number >= 0, not {count!r}.")

    def check(self, **kwargs: Any) -> list[Error]:
        where = f"TASKS[{self.alias!r}]"
        if not isinstance(self.options, dict):
            return [_error(f"{where}['OPTIONS'] must be a dict.", 1)]
        errors = []
        unknown = sorted(set(self.options) - set(OPTION_DEFAULTS))
        if unknown:
            errors.append(_error(f"Unknown {where} option(s): {', '.join(unknown)}.", 2,
                                 hint=f"Valid options: {', '.join(sorted(OPTION_DEFAULTS))}."))
        ttl, count = self._option("result_ttl"), self._option("retry")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            errors.append(_error(f"{where} result_ttl must be a positive whole number of "
                                 f"seconds, not {ttl!r}.", 3))
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            errors.append(_error(f"{where} retry must be a whole number >= 0, not {count!r}.", 4))
        if not isinstance(self._option("enqueue_on_commit"), bool):
            errors.append(_error(f"{where} enqueue_on_commit must be True or False.", 5))
        bad = sorted(q for q in self.queues if not isinstance(q, str) or not QUEUE_NAME.match(q))
        if bad:
            errors.append(_error(f"{where} QUEUES has invalid queue name(s): {bad!r}.", 6,
                                 hint="Queue names use letters, digits, '_', '.', '-' "
                                      "(at most 128 characters)."))
        return errors

    # -- enqueue (caller's thread) -------------------------------------------------------------

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        now = timezone.now()
        if isinstance(task.run_after, timedelta):
            task = _variant(task, run_after=now + task.run_after)
        result = TaskResult(
            task=task, id=payload.new_jid(), status=TaskResultStatus.READY, enqueued_at=now,
            started_at=None, last_attempted_at=None, finished_at=None, args=args, kwargs=kwargs,
            backend=self.alias, errors=[], worker_ids=[])
        payload.check_args(result.args, result.kwargs)
        client.submit_payloads([self._job_hash(result)],
                               on_commit=self._option("enqueue_on_commit"),
                               writer=partial(self._push, result))
        return result

    def _job_hash(self, result: TaskResult) -> dict[str, Any]:
        task = result.task
        count = getattr(task, "retry", None)
        meta = {"id": result.id, "backend": self.alias, "queue_name": task.queue_name,
                "priority": task.priority, "run_after": _epoch(task.run_after),
                "retry": self._option("retry") if count is None else count,
                "task_retry": count, "enqueued_at": _epoch(result.enqueued_at)}
        options: dict[str, Any] = {"retry": meta["retry"], "display_class": task.module_path,
                                   "wrapped": task.module_path,
                                   "kiq_result_ttl": self.result_ttl}
        if task.priority:
            options["priority"] = task.priority
        now = time.time()
        job_hash = payload.build(name=SHIM_NAME, args=[task.module_path, result.args,
                                                       result.kwargs, meta],
                                 kwargs={}, queue=task.queue_name, now=now, options=options,
                                 jid=result.id)
        if meta["run_after"] is not None and meta["run_after"] > now:
            job_hash["at"] = meta["run_after"]
        return job_hash

    def _push(self, result: TaskResult, jobs: list[dict[str, Any]],
              settings: KiqSettings) -> None:
        """The writer ``submit_payloads`` calls (maybe at commit): record + job, then signal."""
        store = storage.get_default()
        for job_hash in jobs:
            now, at = time.time(), job_hash.get("at")
            deferred = at is not None and at > now
            record = {**_static_fields(*job_hash["args"]),
                      "status": "scheduled" if deferred else "queued",
                      "class": result.task.module_path}
            # The schedule set keeps the time in the score only, as Sidekiq does.
            ready = payload.for_schedule(job_hash) if deferred else \
                payload.ready_for_queue(job_hash, now)
            raw = payload.encode(ready)
            client.check_size(ready, settings, raw)  # as push_now does: writers check size
            try:
                if deferred and at is not None:  # (deferred implies it: for the type checker)
                    store.schedule_task(job_hash["jid"], record, raw=raw, at=at,
                                        ttl=self.result_ttl + math.ceil(at - now))
                else:
                    store.push_task(job_hash["jid"], record, queue=ready["queue"], raw=raw,
                                    priority=int(ready.get("priority") or 0),
                                    ttl=self.result_ttl)
            except storage.RedisError as exc:
                raise EnqueueError(f"could not enqueue task {result.task.module_path} "
                                   f"({job_hash['jid']}): Redis error: {exc}",
                                   jid=job_hash["jid"]) from exc
        task_enqueued.send(type(self), task_result=result)

    # -- results (any process) -----------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        record = storage.get_default().job_result(str(result_id))
        if record is None or "task" not in record:  # none, or a @job's
            raise TaskResultDoesNotExist(result_id)
        task = find_task(record.get("task", ""))
        if task is None:
            raise TaskResultDoesNotExist(
                f"{result_id}: its task {record.get('task')!r} is not defined by any module "
                "loaded in this process")
        return _result_from_record(str(result_id), record, task)

    # -- execution (a worker's processor thread, through the shim job) -------------------------

    def execute(self, module_path: str, args: list, kwargs: dict, meta: dict) -> Any:
        """Run the task; its return value (JSON-ready), or the failure re-raised."""
        store, result_id, now = storage.get_default(), meta["id"], time.time()
        fields = {**_static_fields(module_path, args, kwargs, meta), "class": module_path,
                  "status": "running", "last_attempted_at": repr(now)}
        attempt, record = store.start_task_attempt(result_id, fields, worker_id=_worker_id(),
                                                   now=now, ttl=self.result_ttl)
        # Count failures, not attempts: a run cut short by a dead worker is rerun without using
        # a retry. The hash's "retry" field allows that many retries after the first failure.
        failed_before = sum(1 for name in record if name.startswith("error:"))
        final = failed_before >= int(meta.get("retry") or 0)
        task = find_task(module_path)
        if task is None:
            exc = UnknownTask(f"no task {module_path!r} is defined by a module this worker "
                              "loaded (an installed app's tasks.py or jobs.py, or KIQ['IMPORTS'])")
            self._record_failure(store, result_id, attempt, _task_error(exc), final)
            raise exc
        result = _result_from_record(result_id, record, task)
        task_started.send(type(self), task_result=result)
        try:
            call_args = [TaskContext(task_result=result)] if task.takes_context else []
            value = normalize_json(task.call(*call_args, *result.args, **result.kwargs))
        except BaseException as exc:  # noqa: BLE001 - SystemExit fails the task, as in core
            error = _task_error(exc)
            result.errors.append(error)
            self._record_failure(store, result_id, attempt, error, final)
            _set(result, status=TaskResultStatus.FAILED if final else TaskResultStatus.READY,
                 finished_at=timezone.now() if final else None)
            if final:  # inside the handler, as core does: receivers can log exc_info
                task_finished.send(type(self), task_result=result)
            raise
        # The job's settle step records SUCCESSFUL and the value (as for any job's result).
        _set(result, status=TaskResultStatus.SUCCESSFUL, finished_at=timezone.now(),
             _return_value=value)
        task_finished.send(type(self), task_result=result)
        return value

    def _record_failure(self, store: storage.Storage, result_id: str, attempt: int,
                        error: TaskError, final: bool) -> None:
        """Keep this attempt's error (Django's ``TaskResult.errors`` lists them all); the
        job's settle step records the status ("retrying" reads READY, "failed" FAILED)."""
        store.write_job_results([(result_id, {f"error:{attempt}": json.dumps({
            "exception_class_path": error.exception_class_path,
            "traceback": error.traceback})}, self.result_ttl)])


@job(name=SHIM_NAME, retry=0)  # the job hash's own "retry" field is what counts
def run_task(module_path: str, args: list, kwargs: dict, meta: dict) -> Any:
    """The job every task runs as: hands over to the backend that enqueued it."""
    backend = task_backends[meta["backend"]]
    if not isinstance(backend, KiqBackend):
        raise InvalidTaskBackend(f"task backend {meta['backend']!r} is not a KiqBackend in "
                                 "this worker; configure TASKS as in the enqueueing process")
    return backend.execute(module_path, args, kwargs, meta)


def find_task(module_path: str) -> Task | None:
    """The ``Task`` whose ``module_path`` this is, from modules already imported, or None."""
    module_name, _, name = module_path.rpartition(".")
    module = sys.modules.get(module_name)  # never import: the path was read from Redis
    if module is None:
        return None
    candidate = getattr(module, name, None)
    if isinstance(candidate, Task) and candidate.module_path == module_path:
        return candidate
    # ``send = task(_send)`` keeps the function's own name: look at the module's tasks.
    return next((value for value in vars(module).values()
                 if isinstance(value, Task) and value.module_path == module_path), None)


# -- the result record: string fields of one Redis hash ------------------------------------------

def _static_fields(module_path: str, args: list, kwargs: dict, meta: dict) -> dict[str, str]:
    """Fields fixed at enqueue; the shim's arguments carry them all, so a worker can rebuild
    a record that expired while its job waited."""
    return {"task": module_path, "backend": meta["backend"], "queue_name": meta["queue_name"],
            "priority": str(meta["priority"]), "run_after": _num(meta.get("run_after")),
            "retry": str(meta.get("retry", 0)), "task_retry": _int_text(meta.get("task_retry")),
            "enqueued_at": _num(meta.get("enqueued_at")),
            "args": json.dumps(args), "kwargs": json.dumps(kwargs)}


# The shared result record's status (django_kiq.results.STATUSES) as Django's.
_STATUS = {"queued": TaskResultStatus.READY, "scheduled": TaskResultStatus.READY,
           "retrying": TaskResultStatus.READY, "running": TaskResultStatus.RUNNING,
           "succeeded": TaskResultStatus.SUCCESSFUL, "failed": TaskResultStatus.FAILED,
           "cancelled": TaskResultStatus.FAILED}


def _result_from_record(result_id: str, record: dict[str, str], task: Task) -> TaskResult:
    attempts = int(record.get("attempts") or 0)
    errors = sorted((int(k.partition(":")[2]), json.loads(v)) for k, v in record.items()
                    if k.startswith("error:"))
    variant = _variant(task, **_options(record, task))
    result = TaskResult(
        task=variant, id=result_id,
        status=_STATUS.get(record.get("status", ""), TaskResultStatus.READY),
        enqueued_at=_time(record.get("enqueued_at")), started_at=_time(record.get("started_at")),
        last_attempted_at=_time(record.get("last_attempted_at")),
        finished_at=_time(record.get("finished_at")),
        args=json.loads(record.get("args") or "[]"),
        kwargs=json.loads(record.get("kwargs") or "{}"),
        backend=variant.backend, errors=[TaskError(**error) for _, error in errors],
        worker_ids=[record[f"worker:{n}"] for n in range(1, attempts + 1)
                    if f"worker:{n}" in record])
    if record.get("status") == "succeeded" and "value" in record:
        _set(result, _return_value=json.loads(record["value"]))
    return result


def _options(record: dict[str, str], task: Task) -> dict[str, Any]:
    """The task options the record stores, so a result reads back with the task as enqueued
    (``.using(...)`` included). ``task_retry`` is the task's own ``retry`` ("" = None, the
    backend's OPTIONS decide); records written before it existed keep the task's."""
    options: dict[str, Any] = {
        "priority": int(record.get("priority") or 0),
        "queue_name": record.get("queue_name") or task.queue_name,
        "run_after": _time(record.get("run_after")),
        "backend": record.get("backend") or task.backend}
    stored = record.get("task_retry")  # read from Redis: anything else keeps the task's
    if hasattr(task, "retry") and stored is not None and (stored == "" or stored.isdigit()):
        options["retry"] = int(stored) if stored else None
    return options


def _variant(task: Task, **changes: Any) -> Task:
    """A copy of ``task`` with ``changes``, not re-validated: ``replace()`` would check it
    against today's settings, and a stored result must read back even if QUEUES changed."""
    if all(getattr(task, name) == value for name, value in changes.items()):
        return task
    copy = object.__new__(type(task))
    for f in dataclasses.fields(task):
        object.__setattr__(copy, f.name, changes.get(f.name, getattr(task, f.name)))
    return copy


def _set(result: TaskResult, **values: Any) -> None:
    # TaskResult is frozen; core's own backends update it the same way.
    for name, value in values.items():
        object.__setattr__(result, name, value)


def _task_error(exc: BaseException) -> TaskError:
    cls = type(exc)
    return TaskError(exception_class_path=f"{cls.__module__}.{cls.__qualname__}",
                     traceback="".join(format_exception(exc)))


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _int_text(value: int | None) -> str:
    return "" if value is None else str(value)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _time(value: str | float | None) -> datetime | None:
    """Epoch seconds -> a datetime like ``timezone.now()`` gives (aware UTC under USE_TZ)."""
    if not value:
        return None
    if django_settings.USE_TZ:
        return datetime.fromtimestamp(float(value), UTC)
    return datetime.fromtimestamp(float(value))


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def _error(msg: str, n: int, hint: str | None = None) -> Error:
    return Error(msg, hint=hint, id=f"django_kiq.T{n:03d}")

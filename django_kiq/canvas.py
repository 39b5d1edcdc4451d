"""Signatures, chains and groups: workflows described as data, built on batches only.

- :class:`Signature` (``job.s(*args, **kwargs)``): one call of a job, its arguments checked
  like ``enqueue`` (strict JSON); ``.set(...)`` takes the options ``Job.set`` takes.
- :class:`chain`: each step runs in a batch of its own whose ``on_success`` callback
  (:func:`chain_step`) starts the next step; a step that dies never succeeds, so the chain
  stops there (its batch page shows it). The next step's batch is created together with its
  job in one atomic, create-only step, so a callback run twice starts the step once.
- :class:`group`: one batch of all the signatures; ``then`` runs once when all succeeded
  (:func:`run_signature`), given the list of results with ``pass_results=True`` (a chord).

Enqueueing runs in the caller's process; :func:`chain_step` and :func:`run_signature` are jobs
the worker runs. No state.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from . import batches, client, payload, registry, results, storage, workflows
from .conf import KiqSettings, get_settings
from .exceptions import UnknownJob


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    """One call of a job as data: ``name``, ``args``, ``kwargs`` and ``Job.set`` options."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, job_obj: registry.Job, args: tuple, kwargs: dict[str, Any]) -> "Signature":
        payload.check_args(args, kwargs)
        return cls(name=job_obj.name, args=tuple(args), kwargs=dict(kwargs),
                   options=dict(job_obj._overrides))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Signature":
        return cls(name=data["name"], args=tuple(data.get("args", ())),
                   kwargs=dict(data.get("kwargs", {})), options=dict(data.get("options", {})))

    def to_dict(self) -> dict[str, Any]:
        """JSON-native (options that are callables cannot travel: ``set()`` has none)."""
        return {"name": self.name, "args": list(self.args), "kwargs": self.kwargs,
                "options": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in self.options.items()}}

    def set(self, **options: Any) -> "Signature":
        merged = self.job.set(**options)._overrides  # validated as Job.set validates
        return Signature(name=self.name, args=self.args, kwargs=self.kwargs,
                         options=dict(merged))

    @property
    def job(self) -> registry.Job:
        definition = registry.get(self.name)
        if definition is None:
            raise UnknownJob(f"no job is registered as {self.name!r} in this process")
        return registry.Job(definition, dict(self.options))

    def enqueue(self) -> str | None:
        return self.job.enqueue(*self.args, **self.kwargs)

    def job_hash(self, *, extra_kwargs: dict[str, Any] | None = None,
                 settings: KiqSettings | None = None, lineage: tuple[str, ...] = (),
                 jid: str | None = None, result_ttl: int | None = None,
                 args_prefix: tuple = ()) -> dict[str, Any]:
        """The job hash this call enqueues as (a callback's or a workflow step's), joined to
        the batch ``lineage[0]`` (its ancestors after it) if given."""
        job_obj = self.job
        options = job_obj.options
        fields = options.payload_fields()
        if result_ttl is not None:
            fields["kiq_result_ttl"] = max(result_ttl, fields.get("kiq_result_ttl", 0))
        kwargs = {**self.kwargs, **(extra_kwargs or {})}
        args = (*args_prefix, *self.args)
        payload.check_args(args, kwargs)
        job = payload.build(name=self.name, args=args, kwargs=kwargs, queue=options.queue,
                            now=time.time(), options=fields, jid=jid)
        if lineage:
            job["bid"] = lineage[0]
            if lineage[1:]:
                job["kiq_parent_bids"] = list(lineage[1:])
        return job

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.name}.s({args})"


def _ready(job: dict[str, Any], settings: KiqSettings,
           ) -> tuple[storage.BatchPush, dict[str, Any]]:
    """A job hash as the batch writer pushes it (client middleware, size checked), and the
    hash (for its result's "queued" record)."""
    job = client.client_chain(settings)(job)
    if job is None:
        raise ValueError("a client middleware dropped a workflow step; workflows need them")
    now = time.time()
    ready = payload.ready_for_queue(job, now)
    raw = payload.encode(ready)
    client.check_size(ready, settings, raw)
    return storage.BatchPush(jid=job["jid"], raw=raw, queue=ready["queue"]), ready


def _callback(sig: Signature, settings: KiqSettings, lineage: tuple[str, ...],
              display: str | None = None) -> tuple[str, bytes, dict[str, Any]]:
    """A callback's jid, its payload as it waits in its batch, and its hash (``display``: the
    name logs, results and the admin show for a wrapper job, as ``display_class``)."""
    job = sig.job_hash(settings=settings, lineage=lineage)
    if display is not None:
        job["display_class"] = display
    job = client.client_chain(settings)(job)
    raw = payload.encode(payload.for_schedule(job))
    client.check_size(job, settings, raw)
    return job["jid"], raw, job


# -- chains ---------------------------------------------------------------------------------

class chain:  # noqa: N801 - named like the function-style API it is (celery's chain)
    """``chain(a.s(1), b.s(), c.s(), pass_result=False).enqueue()``: each step after the
    previous one succeeded. Returns the chain id; step ``i`` runs in batch ``<id>.<i>``."""

    def __init__(self, *steps: Signature, pass_result: bool = False, description: str = ""):
        if not steps or not all(isinstance(s, Signature) for s in steps):
            raise TypeError("chain takes one or more signatures (job.s(...))")
        for step in steps:  # steps travel as JSON in the callback that starts the next one
            payload.check_json_native(step.to_dict(), f"chain step {step.name}")
        self.steps = steps
        self.pass_result = pass_result
        self.description = description

    def enqueue(self) -> str:
        cid = payload.new_jid()
        start_step(cid, [s.to_dict() for s in self.steps], 0, None, self.pass_result,
                   self.description)
        return cid


def step_jid(cid: str, index: int) -> str:
    """A step's jid, the same on every run of the callback that starts it."""
    return hashlib.sha256(f"{cid}.{index}".encode()).hexdigest()[:24]


def start_step(cid: str, steps: list[dict[str, Any]], index: int, previous: str | None,
               pass_result: bool, description: str) -> bool:
    """Create step ``index``'s batch with its job, once (False: it already exists)."""
    settings = get_settings()
    sig = Signature.from_dict(steps[index])
    prefix: tuple = ()
    if pass_result and previous is not None:
        found = results.get(previous)
        prefix = (found.value if found is not None else None,)
    bid = f"{cid}.{index}"
    jid = step_jid(cid, index)
    keep = settings.batch_ttl if pass_result else None
    step, step_hash = _ready(sig.job_hash(settings=settings, lineage=(bid,), jid=jid,
                                          result_ttl=keep, args_prefix=prefix), settings)
    seal = []
    if index + 1 < len(steps):
        nxt = Signature(name=STEP_NAME, args=(cid, steps, index + 1, jid, pass_result,
                                              description),
                        options=dict(Signature.from_dict(steps[index + 1]).options))
        cb_jid, cb_raw, _ = _callback(nxt, settings, ())
        # The callback's batch_id keyword: added as batches add it.
        seal.append(("success", cb_jid, _with_batch_id(cb_raw, bid)))
    label = description or f"chain {cid[:8]}"
    store = storage.get_default()
    started = store.batch_write(
        bid, ttl=settings.batch_ttl, only_new=True, jobs=[step], seal=seal,
        create={"bid": bid, "description": f"{label}: step {index + 1}/{len(steps)} "
                f"{sig.name}", "created_at": repr(time.time()), "parent": "",
                "chain": cid, "step": str(index), "steps": str(len(steps))})
    if started:  # not on a repeat: the step may be running by now
        workflows.record_enqueued(store, [step_hash], settings, time.time())
    return started


def _with_batch_id(raw: bytes, bid: str) -> bytes:
    job = payload.decode(raw)
    job.setdefault("kwargs", {})["batch_id"] = bid
    return payload.encode(job)


STEP_NAME = "django_kiq.canvas.chain_step"
RUN_NAME = "django_kiq.canvas.run_signature"
#: Options of a group's ``then`` job that its run_signature job takes on. ``expires_in`` stays
#: behind: the callback's payload is built when the group is enqueued, long before it runs.
RUNNER_OPTIONS = registry.SET_OPTION_NAMES - {"expires_in"}


@registry.job(name=STEP_NAME)
def chain_step(cid: str, steps: list, index: int, previous: str, pass_result: bool,
               description: str, batch_id: str = "") -> None:
    """The on_success callback of a chain's step: starts the next step (once)."""
    start_step(cid, steps, index, previous, pass_result, description)


# -- groups ---------------------------------------------------------------------------------

class group:  # noqa: N801
    """``group(a.s(1), a.s(2)).enqueue(then=c.s(), pass_results=True)``: one batch of all;
    ``then`` once all succeeded, given ``[result, ...]`` first with ``pass_results``.
    Returns the batch id. Inside ``with batch():`` the group's batch is a child of it."""

    def __init__(self, *members: Signature, description: str = ""):
        if not members or not all(isinstance(s, Signature) for s in members):
            raise TypeError("group takes one or more signatures (job.s(...))")
        self.members = members
        self.description = description

    def enqueue(self, then: Signature | None = None, pass_results: bool = False) -> str:
        if then is not None and not isinstance(then, Signature):
            raise TypeError("then takes a signature (job.s(...))")
        settings = get_settings()
        parent = batches.current()
        ancestors = (parent.bid, *parent.ancestors) if parent is not None else ()
        bid = payload.new_jid()
        keep = settings.batch_ttl if pass_results else None
        jids = payload.new_jids(len(self.members))
        readied = [_ready(sig.job_hash(settings=settings, lineage=(bid, *ancestors), jid=jid,
                                       result_ttl=keep), settings)
                   for sig, jid in zip(self.members, jids)]
        pushes = [push for push, _ in readied]
        seal, callbacks = [], []
        if then is not None:
            # run_signature calls ``then`` in its own run, with the options of then's job
            # (queue, retries, time limit, result TTL...) and its name in logs and results.
            target = then.job.options
            runner = Signature(name=RUN_NAME, args=(then.to_dict(),),
                               kwargs={"results_of": jids if pass_results else None},
                               options={name: getattr(target, name) for name in RUNNER_OPTIONS})
            cb_jid, cb_raw, callback = _callback(runner, settings, ancestors,
                                                 display=then.name)
            seal.append(("success", cb_jid, cb_raw))
            callbacks.append(callback)
        store = storage.get_default()
        store.batch_write(
            bid, ancestors=ancestors, ttl=settings.batch_ttl, jobs=pushes, seal=seal,
            create={"bid": bid, "description": self.description or
                    f"group of {len(self.members)}", "created_at": repr(time.time()),
                    "parent": ancestors[0] if ancestors else ""})
        # The members' and the callback's records, in one round trip.
        now = time.time()
        records = workflows.enqueued_records([job for _, job in readied], settings, now)
        records += workflows.enqueued_records(callbacks, settings, now, callbacks=True)
        if records:
            store.write_job_results(records, status_if_new=True)
        return bid


@registry.job(name=RUN_NAME)
def run_signature(sig: dict, results_of: list | None = None) -> Any:
    """A group's ``then``: calls the job's function here, with the results first if asked."""
    target = Signature.from_dict(sig)
    definition = registry.get(target.name)
    if definition is None:
        raise UnknownJob(f"no job is registered as {target.name!r} in this worker")
    args = list(target.args)
    if results_of is not None:
        found = [results.get(jid) for jid in results_of]
        args.insert(0, [r.value if r is not None else None for r in found])
    value = definition.func(*args, **target.kwargs)
    if definition.is_async:
        value = asyncio.run(value)
    return value

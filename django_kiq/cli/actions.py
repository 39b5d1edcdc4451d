"""``kiq queue``, ``kiq process``, ``kiq enqueue``, ``kiq cancel``: one thing, seen or acted on.

``enqueue`` runs only jobs this project registered (``registry.get``): the name is checked here,
the arguments are JSON, and the push goes through the job's own ``enqueue`` (client middleware,
uniqueness, size limit), the one pipeline every enqueue takes.
"""

from __future__ import annotations

import difflib
import json
import math
import time
from typing import Any

from .. import api, registry
from ..exceptions import DuplicateJob, RedisUnavailable
from ..registry import QUEUE_NAME, Job
from . import NOT_DONE, NOT_FOUND, USAGE, Context, Error
from .output import ago, job_dict, process_dict, queue_dict, table
from .sets import add_paging, check_paging


def add_parsers(sub: Any, common: Any) -> None:
    p = sub.add_parser("queue", parents=[common], help="one queue: its jobs, or an action")
    p.add_argument("name")
    add_paging(p)
    group = p.add_mutually_exclusive_group()
    for action, text in (("clear", "delete every job of the queue"),
                         ("pause", "workers stop taking its jobs"), ("resume", "undo --pause")):
        group.add_argument(f"--{action}", dest="action", action="store_const", const=action,
                           help=text)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=queue, action=None)

    p = sub.add_parser("process", parents=[common], help="one worker process, or a signal")
    p.add_argument("identity", metavar="ID", help="its identity, or a unique prefix of it")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", dest="action", action="store_const", const="quiet",
                       help="finish running jobs, fetch no more (TSTP)")
    group.add_argument("--stop", dest="action", action="store_const", const="stop",
                       help="shut down gracefully (TERM)")
    p.set_defaults(handler=process, action=None)

    p = sub.add_parser("enqueue", parents=[common], help="enqueue a registered job")
    p.add_argument("name", help="the job's registered name (module.function)")
    p.add_argument("--args", dest="job_args", default="[]", metavar="JSON",
                   help="a JSON array (default [])")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="a JSON object (default {})")
    p.add_argument("--queue", default=None, metavar="Q", help="instead of the job's own queue")
    p.add_argument("--in", dest="delay", type=float, default=None, metavar="SECONDS",
                   help="run it that many seconds from now")
    p.set_defaults(handler=enqueue)

    p = sub.add_parser("cancel", parents=[common], help="cancel a job wherever it is")
    p.add_argument("jid")
    p.set_defaults(handler=cancel)


def queue(options: dict, ctx: Context) -> None:
    name, action = options["name"], options["action"]
    if not QUEUE_NAME.match(name):
        raise Error(f"{name!r} is not a valid queue name", USAGE)
    q = api.Queue(name)
    if action in ("pause", "resume"):  # pausing a queue before its first job is fine
        getattr(q, action)()
        ctx.show(f"Queue {name} {action}d.", {"queue": name, "paused": action == "pause"})
        return
    state = api.Stats(queues=True, extra_queues=[name]).queue(name)
    if state is None or (state.size == 0 and name not in {x.name for x in api.Queue.all()}):
        raise Error(f"no queue named {name!r}", NOT_FOUND)
    if action == "clear":
        ctx.confirm(f"Delete all {state.size:,} job(s) of queue {name}? This cannot be undone.")
        deleted = q.clear()
        ctx.show(f"Deleted {deleted:,} job(s) of queue {name}.",
                 {"queue": name, "deleted": deleted})
        return
    check_paging(options)
    records, now = q.jobs(options["offset"], options["limit"]), time.time()
    head = (f"{name}: {state.size:,} job(s), latency {state.latency:.1f}s"
            + (", paused" if state.paused else ""))
    rows = table(["ENQUEUED", "JID", "JOB", "ARGS"],
                 [(ago(r.enqueued_at, now), r.jid, r.display_name, r.args) for r in records])
    ctx.show(head + ("\n" + rows if records else ""),
             {**queue_dict(state), "offset": options["offset"], "limit": options["limit"],
              "jobs": [job_dict(r) for r in records]})


def process(options: dict, ctx: Context) -> None:
    wanted, procs = options["identity"], api.ProcessSet().list()
    found = [p for p in procs if p.identity == wanted] or [
        p for p in procs if p.identity.startswith(wanted)]
    if not found:
        raise Error(f"no live process {wanted!r} (see `kiq processes`)", NOT_FOUND)
    if len(found) > 1:
        raise Error(f"{wanted!r} names {len(found)} processes; give more of the identity",
                    USAGE)
    p, action = found[0], options["action"]
    if action is not None:
        getattr(api.ProcessSet(), action)(p.identity)
        ctx.show(f"Asked {p.identity} to {action}: it obeys at its next heartbeat.",
                 {"identity": p.identity, "signal": "TSTP" if action == "quiet" else "TERM"})
        return
    now = time.time()
    head = (f"{p.identity}  {'quiet' if p.quiet else 'running'}, {p.busy}/{p.concurrency} busy, "
            f"queues {','.join(p.queues)}, beat {ago(p.beat, now)}")
    rows = table(["THREAD", "QUEUE", "STARTED", "JID", "JOB", "ARGS"],
                 [(w.thread, w.queue, ago(w.run_at, now), w.job.jid, w.job.display_name,
                   w.job.args) for w in p.work])
    ctx.show(head + ("\n" + rows if p.work else ""), process_dict(p))


def enqueue(options: dict, ctx: Context) -> None:
    name = options["name"]
    definition = registry.get(name)
    if definition is None:
        close = difflib.get_close_matches(name, registry.names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise Error(f"no job is registered as {name!r}.{hint} Only registered jobs can be "
                    "enqueued (jobs.py of installed apps and KIQ['IMPORTS']).", USAGE)
    args = _json_option(options["job_args"], "--args", list, "a JSON array")
    kwargs = _json_option(options["kwargs"], "--kwargs", dict, "a JSON object")
    delay = options["delay"]
    if delay is not None and not (math.isfinite(delay) and delay >= 0):
        raise Error("--in must be a number of seconds, 0 or more", USAGE)
    try:
        job: Job[..., Any] = Job(definition)
        if options["queue"] is not None:
            job = job.set(queue=options["queue"])
        jid = (job.enqueue(*args, **kwargs) if not delay
               else job.enqueue_in(delay, *args, **kwargs))
    except DuplicateJob as exc:
        raise Error(f"not enqueued: {exc}", NOT_DONE) from None
    except RedisUnavailable:
        raise
    except (TypeError, ValueError) as exc:  # bad arguments, bad queue name, too large
        raise Error(f"not enqueued: {exc}", USAGE) from None
    if jid is None:
        raise Error("not enqueued: a client middleware or a unique lock dropped it", NOT_DONE)
    at = time.time() + delay if delay else None
    where = f"scheduled {ago(at, time.time())}" if at else "enqueued"
    ctx.show(f"{name} {where} on queue {job.options.queue} as {jid}",
             {"jid": jid, "name": name, "queue": job.options.queue, "at": at})


def _json_option(text: str, flag: str, kind: type, what: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Error(f"{flag} is not JSON: {exc}", USAGE) from None
    if not isinstance(value, kind):
        raise Error(f"{flag} must be {what}, not {type(value).__name__}: {text}", USAGE)
    return value


def cancel(options: dict, ctx: Context) -> None:
    jid = options["jid"]
    where = api.cancel(jid, by="manage.py kiq")
    if where is None:
        raise Error(f"job {jid} was not found waiting or running (it finished, or is between "
                    "two places); its cancellation is recorded, so it will not start", NOT_FOUND)
    ctx.show(f"Cancelled {jid} ({where}).", {"jid": jid, "where": where})

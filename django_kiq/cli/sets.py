"""``kiq retries|scheduled|dead``: list a page, search, and act, as the admin's set pages do.

Without an action the command lists a page (``--limit``/``--offset``, cut in Redis) or, with
``--filter``, the matches of bounded search steps (``JobSet.search``: at most ``SEARCH_BUDGET``
members scanned per step; ``--cursor`` resumes where the last one stopped). An action acts on
exactly what that listing would show, or with ``--all`` on the whole set (the API's ``*_all``,
server-side in batches) or on every match of ``--filter`` (step by step, so memory holds one
step's matches). Deleting and killing always ask first, and so does any ``--all``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .. import api
from ..records import JobRecord
from . import USAGE, Context, Error
from .output import ago, job_dict, table

MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Verb:
    flag: str  # the option: --retry, --delete, --kill
    method: str  # the API method on chosen entries
    all_method: str  # the API method on the whole set
    done: str  # "Retried 3 jobs."
    asks: bool  # destructive: confirm even for a page


RETRY = Verb(flag="retry", method="retry_now", all_method="retry_all", done="Retried",
             asks=False)
DELETE = Verb(flag="delete", method="delete", all_method="delete_all", done="Deleted",
              asks=True)
KILL = Verb(flag="kill", method="kill", all_method="kill_all", done="Moved to the dead set",
            asks=True)
SETS: dict[str, tuple[type[api.JobSet], tuple[Verb, ...], str]] = {
    "retries": (api.RetrySet, (RETRY, DELETE, KILL), "failed jobs waiting for a retry"),
    "scheduled": (api.ScheduledSet, (RETRY, DELETE), "jobs waiting for their time"),
    "dead": (api.DeadSet, (RETRY, DELETE), "jobs out of retries"),
}


def add_parsers(sub: Any, common: Any) -> None:
    for name, (_, verbs, help_text) in SETS.items():
        p = sub.add_parser(name, parents=[common], help=help_text)
        add_paging(p)
        p.add_argument("--filter", metavar="TEXT",
                       help="entries whose JSON contains TEXT (case-sensitive; a jid works)")
        p.add_argument("--cursor", type=int, default=0,
                       help="resume a --filter search where the last one stopped")
        group = p.add_mutually_exclusive_group()
        for verb in verbs:
            group.add_argument(f"--{verb.flag}", dest="verb", action="store_const", const=verb,
                               help=_verb_help(verb, name))
        p.add_argument("--all", action="store_true",
                       help="act on the whole set (with --filter: on every match)")
        p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
        p.set_defaults(handler=run, set_name=name, verb=None)


def add_paging(parser: Any) -> None:
    parser.add_argument("--limit", type=int, default=api.PAGE, help="entries per page (25)")
    parser.add_argument("--offset", type=int, default=0, help="entries to skip")


def check_paging(options: dict) -> None:
    if not 1 <= options["limit"] <= MAX_LIMIT or options["offset"] < 0:
        raise Error(f"--limit must be 1 to {MAX_LIMIT} and --offset at least 0", USAGE)


def _verb_help(verb: Verb, set_name: str) -> str:
    what = {"retry": "push onto their queues now", "delete": "delete",
            "kill": "move to the dead set"}[verb.flag]
    return f"{what} the listed entries (or, with --all, all of them)"


def run(options: dict, ctx: Context) -> None:
    check_paging(options)
    job_set = SETS[options["set_name"]][0]()
    verb: Verb | None = options["verb"]
    if options["all"] and verb is None:
        raise Error("--all needs an action: " + " ".join(
            f"--{v.flag}" for v in SETS[options["set_name"]][1]), USAGE)
    if verb is not None and options["all"]:
        return _act_all(job_set, verb, options, ctx)
    records, note, data = _listing(job_set, options)
    if verb is None:
        ctx.show(_table(records, options["set_name"]) + note, data)
        return
    if not records:
        ctx.show("Nothing to act on.", {"action": verb.flag, "selected": 0, "done": 0})
        return
    if verb.asks:
        ctx.confirm(f"{verb.flag.capitalize()} {_jobs(len(records))} of the {job_set.name} set?")
    done = getattr(job_set, verb.method)(records)
    _report(ctx, verb, done, len(records))


def _listing(job_set: api.JobSet, options: dict) -> tuple[list[JobRecord], str, dict]:
    """The entries a listing shows, a footer for people and the JSON document."""
    size, text = job_set.size(), options["filter"]
    if not text:
        offset, limit = options["offset"], options["limit"]
        records = job_set.jobs(offset, limit)
        end = offset + len(records)
        note = (f"\n{offset + 1}-{end} of {size:,}" if records else f"\n0 of {size:,}") + (
            f" (next page: --offset {end})" if end < size else "")
        return records, note, {"set": job_set.name, "size": size, "offset": offset,
                               "limit": limit, "jobs": [job_dict(r) for r in records]}
    step = job_set.search(text, cursor=max(0, options["cursor"]), limit=options["limit"])
    scanned = min(step.scanned, size)  # counted in ZSCAN pages: the last one is partial
    note = f"\n{len(step.records)} match(es) for {text!r}, {scanned:,} of {size:,} scanned"
    if not step.complete:
        note += f"; more may match: --cursor {step.cursor}"
    return step.records, note, {
        "set": job_set.name, "size": size, "filter": text, "cursor": step.cursor,
        "complete": step.complete, "scanned": step.scanned,
        "jobs": [job_dict(r) for r in step.records]}


def _act_all(job_set: api.JobSet, verb: Verb, options: dict, ctx: Context) -> None:
    text, size = options["filter"], job_set.size()
    if not text:
        ctx.confirm(f"{verb.flag.capitalize()} all {_jobs(size)} of the {job_set.name} set?"
                    + (" This cannot be undone." if verb is DELETE else ""))
        _report(ctx, verb, getattr(job_set, verb.all_method)(), None)
        return
    ctx.confirm(f"{verb.flag.capitalize()} every entry of the {job_set.name} set "
                f"({_jobs(size)}) whose JSON contains {text!r}?")
    cursor, selected, done = 0, 0, 0
    while True:  # one bounded search step at a time: memory holds one step's matches
        step = job_set.search(text, cursor=cursor, limit=MAX_LIMIT)
        if step.records:
            selected += len(step.records)
            done += getattr(job_set, verb.method)(step.records)
        if step.complete:
            break
        cursor = step.cursor
    _report(ctx, verb, done, selected)


def _report(ctx: Context, verb: Verb, done: int, selected: int | None) -> None:
    text = f"{verb.done} {_jobs(done)}."
    if selected is not None and done < selected:
        text += f" {_jobs(selected - done)} had already left the set."
    ctx.show(text, {"action": verb.flag, "selected": selected, "done": done})


def _jobs(count: int) -> str:
    return f"{count:,} job" + ("" if count == 1 else "s")


def _table(records: list[JobRecord], set_name: str) -> str:
    if not records:
        return "No jobs."
    now, failures = time.time(), set_name != "scheduled"
    headers = ["WHEN", "JID", "JOB", "QUEUE", "ARGS"] + (["RETRIES", "ERROR"] if failures else [])
    rows = []
    for r in records:
        row: list[Any] = [ago(r.score, now), r.jid, r.display_name, r.queue, r.args]
        if failures:
            error = f"{r.error_class}: {r.error_message}" if r.error_class else ""
            row += ["-" if r.retry_count is None else str(r.retry_count), error]
        rows.append(row)
    return table(headers, rows)

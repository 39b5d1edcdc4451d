"""The Cancel buttons (docs/execution.md): what the Busy, queue, set and job pages share.

A page's view, on a POST with ``action=cancel`` (``kiq_view`` already checked manage_jobs and
``admin_view`` the CSRF token), passes the jids its form named to :func:`cancel`. Each goes
through ``api.cancel`` naming the user, so a worker logs who cancelled the job it was running;
one message then says where the jobs were.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest

from django_kiq import api
from django_kiq.records import parse_key

from .base import perform, plural

MAX_JID = 200  # longer is no jid django-kiq or Sidekiq makes: refused, not looked for

# Where api.cancel found a job -> how the message says it.
WHERE = {
    "running": "was running: JobCancelled is raised in it within a second",
    "queue": "was queued: removed",
    "scheduled": "was scheduled: removed",
    "retry": "was waiting for a retry: removed",
}
SHORT = {"running": "running", "queue": "queued", "scheduled": "scheduled", "retry": "retrying"}


def posted_jids(request: HttpRequest) -> list[str] | None:
    """The jids a cancel form names: ``jid`` fields, or set entry ``key`` fields (ticked rows;
    the jid is part of the key). None when one is malformed."""
    jids = request.POST.getlist("jid")
    for key in request.POST.getlist("key"):
        try:
            jids.append(parse_key(key)[1])
        except ValueError:
            return None
    if not all(0 < len(jid) <= MAX_JID for jid in jids):
        return None
    return list(dict.fromkeys(jids))  # each once, in order


def cancel(request: HttpRequest, jids: list[str]) -> None:
    """Cancel each job and report where each was ("not found": it had already finished)."""
    if not jids:
        messages.warning(request, "No jobs were selected: tick the jobs to cancel first.")
        return
    by = request.user.get_username()
    perform(request, f"Cancel ({plural(len(jids))})",
            lambda: [(jid, api.cancel(jid, by=by)) for jid in jids], _outcome)


def _outcome(results: list[tuple[str, str | None]]) -> str | tuple[int, str]:
    if len(results) == 1:
        jid, where = results[0]
        if where is None:
            return (messages.WARNING, f"Job {jid} was not found: it had finished (or was "
                                      "between two places; it will not run).")
        return f"Cancelled job {jid}: it {WHERE.get(where, where)}."
    found = [where for _, where in results if where is not None]
    parts = [f"{found.count(where)} {short}" for where, short in SHORT.items() if where in found]
    text = f"Cancelled {plural(len(found))}" + (f" ({', '.join(parts)})." if parts else ".")
    missing = len(results) - len(found)
    if missing:
        return (messages.WARNING, f"{text} {plural(missing)} not found: finished already.")
    return text

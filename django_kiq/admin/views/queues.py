"""Queues: sizes, latency and pause state; one queue's jobs paged in Redis, delete, cancel, clear.

A queue page shows the status and progress of its jobs that keep a result record
(``result_ttl``): one pipelined read for the page, none when no job on it keeps one.

Every figure of a page (the summary bar, the sizes, latencies and pause states) comes from one
``api.Stats`` snapshot, so they agree. A paused queue is listed even when it is empty and
unregistered (after Clear), so its Resume button stays reachable. A job is deleted by its entry
key: exactly the member shown, even when another job shares its jid.
"""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from django_kiq import api, results

from ..paging import Pager
from ..present import JobRow, duration
from . import control
from .base import back, confirm, confirmed, gone, perform, plural, render, url
from .job import is_queue_key


def queues(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    stats = api.Stats(queues=True)
    rows = [{"queue": q, "size": f"{q.size:,}", "latency": duration(q.latency),
             "paused": q.paused, "url": url(request, "queue", q.name)} for q in stats.queues or ()]
    return render(request, site, "queues.html", title="Queues", page="queues", stats=stats,
                  queues=rows, live=True)


def queue(request: HttpRequest, name: str, *, site: AdminSite) -> HttpResponse:
    q = api.Queue(name)
    if request.method == "POST":
        return _act(request, site, q)
    stats = api.Stats(queues=True, extra_queues=[name])
    state = stats.queue(name)
    assert state is not None  # extra_queues lists it
    pager = Pager.from_request(request, state.size)
    records = q.jobs(pager.offset, pager.limit)
    kept = results.of_jobs([r.fields for r in records if not r.malformed])
    rows = [JobRow.build(r, url(request, "queue_job", name, r.key), kept.get(r.jid))
            for r in records]
    return render(request, site, "queue.html", title=f"Queue {name}", page="queues",
                  stats=stats, crumbs=(("Queues", url(request, "queues")),), queue=q,
                  latency=duration(state.latency), paused=state.paused, pager=pager,
                  size=f"{pager.total:,}", rows=rows, show_progress=bool(kept), live=True)


def _act(request: HttpRequest, site: AdminSite, q: "api.Queue") -> HttpResponse:
    action = request.POST.get("action", "")
    here = url(request, "queue", q.name)
    if action == "delete":
        return _delete(request, q, here)
    if action == "cancel":  # by jid: api.cancel finds the job even if it started meanwhile
        jids = control.posted_jids(request)
        if jids is None or len(jids) != 1:
            return HttpResponseBadRequest("one jid is required")
        control.cancel(request, jids)
        return back(request, here)
    if action in ("pause", "resume"):
        perform(request, f"{action.capitalize()} {q.name}", getattr(q, action),
                lambda _: f"Queue {q.name} {'paused' if action == 'pause' else 'resumed'}.")
        return back(request, here)
    if action == "clear":
        if not confirmed(request):
            return confirm(
                request, site, title=f"Clear queue {q.name}", page="queues",
                crumbs=(("Queues", url(request, "queues")), (q.name, here)),
                question=f"Delete all {plural(q.size())} waiting in queue “{q.name}”? "
                         "This cannot be undone.",
                action="clear", button="Yes, clear it", cancel_url=here, danger=True,
                fields={"next": request.POST.get("next", "")})
        perform(request, f"Clear {q.name}", q.clear,
                lambda n: f"Cleared queue {q.name}: deleted {plural(n)}.")
        return back(request, here)
    return HttpResponseBadRequest(f"unknown action {action!r}")


def _delete(request: HttpRequest, q: "api.Queue", here: str) -> HttpResponse:
    """Delete the entry a row or a detail page showed (its key), never another with its jid."""
    key = request.POST.get("key", "")
    if not is_queue_key(key):
        return HttpResponseBadRequest("a queue entry key is required")
    record = q.get(key)
    perform(request, "Delete", lambda: record is not None and q.delete(record),
            lambda ok: f"Deleted job {record.jid}." if ok and record
            else gone(f"That job was no longer in queue {q.name}."))
    return back(request, here)

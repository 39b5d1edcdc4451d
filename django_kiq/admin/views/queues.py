"""Queues: sizes, latency and pause state; one queue's jobs paged in Redis, delete, clear."""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from django_kiq import api

from ..paging import Pager
from ..present import JobRow, duration
from .base import back, confirm, confirmed, gone, perform, plural, render, url


def queues(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    rows = [{"queue": q, "size": f"{q.size():,}", "latency": duration(q.latency()),
             "paused": q.paused, "url": url(request, "queue", q.name)} for q in api.Queue.all()]
    return render(request, site, "queues.html", title="Queues", page="queues", queues=rows,
                  live=True)


def queue(request: HttpRequest, name: str, *, site: AdminSite) -> HttpResponse:
    q = api.Queue(name)
    if request.method == "POST":
        return _act(request, site, q)
    pager = Pager.from_request(request, q.size())
    rows = [JobRow.build(r, url(request, "queue_job", name, r.key))
            for r in q.jobs(pager.offset, pager.limit)]
    return render(request, site, "queue.html", title=f"Queue {name}", page="queues",
                  crumbs=(("Queues", url(request, "queues")),), queue=q,
                  latency=duration(q.latency()), paused=q.paused, pager=pager,
                  size=f"{pager.total:,}", rows=rows, live=True)


def _act(request: HttpRequest, site: AdminSite, q: "api.Queue") -> HttpResponse:
    action = request.POST.get("action", "")
    here = url(request, "queue", q.name)
    if action == "delete":
        jid = request.POST.get("jid", "")
        if not jid:
            return HttpResponseBadRequest("jid is required")
        perform(request, f"Delete {jid}", lambda: q.delete(jid),
                lambda ok: f"Deleted job {jid}." if ok
                else gone(f"Job {jid} was no longer in queue {q.name}."))
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

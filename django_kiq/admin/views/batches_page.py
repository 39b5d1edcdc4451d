"""Batches: recent batches with their progress and callbacks; a batch page with its pending,
failed and dead members and one action (retry its failed jobs now). Reads through
``django_kiq.batches``; no Redis here."""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest

from django_kiq import batches

from ..present import moment
from .base import back, perform, render, url

PER_PAGE = 25
MEMBERS_SHOWN = 200


def batch_list(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    try:
        start = max(0, int(request.GET.get("start", "0")))
    except ValueError:
        start = 0
    total, found = batches.recent(start, PER_PAGE)
    rows = [_row(request, b) for b in found]
    return render(request, site, "batches.html", title="Batches", page="batches", rows=rows,
                  total=total, start=start,
                  newer=max(0, start - PER_PAGE) if start else None,
                  older=start + PER_PAGE if start + PER_PAGE < total else None)


def batch_detail(request: HttpRequest, bid: str, *, site: AdminSite) -> HttpResponse:
    if not batches.BID.match(bid):
        raise Http404("malformed batch id")
    status = batches.BatchStatus(bid)
    if request.method == "POST":
        if request.POST.get("action") != "retry_failed":
            return HttpResponseBadRequest("action=retry_failed is the only action")
        perform(request, f"Retry the failed jobs of batch {bid}", status.retry_failed,
                lambda n: f"Moved {n} failed job(s) of batch {bid} to their queues.")
        return back(request, url(request, "batch", bid))
    if not status.exists:
        raise Http404("no such batch (it may have expired)")
    return render(request, site, "batch.html", title=f"Batch {bid}", page="batches",
                  crumbs=(("Batches", url(request, "batches")),), row=_row(request, status),
                  pending=_members(request, status.pending_jids(MEMBERS_SHOWN)),
                  failed=_members(request, status.failed_jids(MEMBERS_SHOWN)),
                  dead=_members(request, status.dead_jids(MEMBERS_SHOWN)),
                  shown=MEMBERS_SHOWN)


def _row(request: HttpRequest, b: batches.BatchStatus) -> dict:
    state = ("succeeded" if b.succeeded else "complete" if b.complete else
             "open" if not b.sealed else "running")
    return {"b": b, "state": state, "pct": b.percent, "created": moment(b.created_at),
            "url": url(request, "batch", b.bid),
            "parent_url": url(request, "batch", b.parent) if b.parent else None,
            "callbacks": [{"which": which, "fired": moment(cb["fired_at"])}
                          for which, cb in b.callbacks.items() if cb["defined"]]}


def _members(request: HttpRequest, members: list[str]) -> list[dict]:
    """Each member's label and link: a child batch's page, or the job's page wherever the job
    is now (``find/<jid>/``: queued, running, scheduled, retrying or dead)."""
    out = []
    for member in members:
        if member.startswith("b:"):
            out.append({"label": f"batch {member[2:]}", "url": url(request, "batch", member[2:])})
        else:
            out.append({"label": member, "url": url(request, "find", member)})
    return out

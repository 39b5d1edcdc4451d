"""Periodic (cron) jobs: schedule, last and next run; pause, resume and enqueue now; and how far
each worker's clock is from Redis's (which the ticks follow)."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from django_kiq import periodic as cron
from django_kiq.exceptions import KiqError

from ..present import moment, short_json
from .base import back, gone, perform, render, url

# action (also the django_kiq.periodic function) -> success message
ACTIONS = {
    "pause": lambda name, _: f"Paused {name}: its ticks are skipped until it is resumed.",
    "resume": lambda name, _: f"Resumed {name}.",
    "enqueue_now": lambda name, jid: (f"Enqueued {name} now (job {jid})." if jid else
                                      gone(f"Client middleware cancelled the run of {name}.")),
}


def periodic(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    if request.method == "POST":
        return _act(request)
    rows = [{"record": r, "entry": r.entry, "last_run": moment(r.last_run),
             "next_run": moment(r.next_run),
             "args": short_json(r.entry.args) + (f" {short_json(r.entry.kwargs)}"
                                                 if r.entry.kwargs else "")}
            for r in cron.records()]
    clocks: list[dict[str, Any]] = [{"clock": c, "text": _offset_text(c.offset)}
                                    for c in cron.clocks()]
    return render(request, site, "periodic.html", title="Periodic jobs", page="periodic",
                  rows=rows, clocks=clocks, skewed=[c for c in clocks if c["clock"].skewed],
                  tolerance=f"{cron.CLOCK_TOLERANCE:g}", live=True)


def _offset_text(offset: float) -> str:
    if abs(offset) < 0.0005:
        return "in step with Redis"
    return f"{abs(offset):.3f} s {'ahead of' if offset > 0 else 'behind'} Redis"


def _act(request: HttpRequest) -> HttpResponse:
    action, name = request.POST.get("action", ""), request.POST.get("name", "")
    if action not in ACTIONS or not name:
        return HttpResponseBadRequest("action and name are required")
    text = ACTIONS[action]
    # LookupError: no entry of that name (renamed or removed since the page was drawn).
    perform(request, f"{action.replace('_', ' ').capitalize()} {name}",
            lambda: getattr(cron, action)(name), lambda result: text(name, result),
            expected=(KiqError, LookupError))
    return back(request, url(request, "periodic"))

"""Limits: every limiter used in the last 24 hours, how full it is, and a Reset action."""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from django_kiq import api, limit_rules

from ..present import duration, moment
from .base import back, perform, render, url

KIND_TEXT = {
    "concurrent": "at most {size} at once",
    "window": "{size} per clock {per}",
    "bucket": "{size} in any {per}",
    "leaky": "bursts of {size}, drains {size} per {per}",
}
NAMED = {seconds: name for name, seconds in limit_rules.INTERVALS.items()}
SPAN_TEXT = {"concurrent": "a slot expires after {span}", "window": "windows of {span}",
             "bucket": "counted over {span}", "leaky": "one every {step}"}


def limits(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    if request.method == "POST":
        return _reset(request)
    rows = [_row(r) for r in api.limits()]
    return render(request, site, "limits.html", title="Limits", page="limits", rows=rows,
                  live=True)


def _row(r: api.LimitRecord) -> dict:
    span = r.lock_timeout if r.kind == "concurrent" else r.interval
    assert span is not None  # the one of the two this kind has
    per = NAMED.get(span) or duration(span)
    return {"r": r, "rule": KIND_TEXT[r.kind].format(size=f"{r.size:,}", per=per),
            "span": SPAN_TEXT[r.kind].format(span=duration(span), step=duration(span / r.size)),
            "last_used": moment(r.last_used),
            "full": r.in_use >= r.size,
            "pct": min(100, round(100 * r.in_use / r.size)),
            "in_use": f"{r.in_use:,}", "acquired": f"{r.acquired:,}",
            "throttled": f"{r.throttled:,}", "rescheduled": f"{r.rescheduled:,}"}


def _reset(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "")
    if request.POST.get("action") != "reset" or not limit_rules.NAME.match(name):
        return HttpResponseBadRequest("action=reset and a limiter name are required")
    perform(request, f"Reset {name}", lambda: api.reset_limit(name),
            lambda _: f"Reset limiter {name}: its slots and counts are free again.")
    return back(request, url(request, "limits"))

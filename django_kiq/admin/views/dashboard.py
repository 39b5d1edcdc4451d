"""Dashboard (counters, history chart, Redis) and the JSON feed of the live chart.

Each answer's counters, and the dashboard's daily history, come from one ``api.Stats``
snapshot (one MULTI), so processed, failed, enqueued and the set sizes of one answer belong to
the same instant. The Redis panel is the server's own INFO, read beside it.
"""

from __future__ import annotations

import time

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse, JsonResponse

from django_kiq import api

from .. import charts
from .base import choice, render

HISTORY_DAYS = (7, 30, 90, 180)
DEFAULT_DAYS = 30
POLL_SECONDS = (2, 5, 10, 20)


def dashboard(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    days = choice(request.GET.get("days"), HISTORY_DAYS, DEFAULT_DAYS)
    stats = api.Stats(history_days=days)
    history = stats.daily or []  # a list: history_days > 0
    chart = charts.line_chart(
        [day.strftime("%b %d") for day, _, _ in history],
        [("Processed", "processed", [p for _, p, _ in history]),
         ("Failed", "failed", [f for _, _, f in history])])
    info = stats.redis_info()
    return render(request, site, "dashboard.html", title="Dashboard", page="dashboard",
                  stats=stats, chart=chart, days=days, day_choices=HISTORY_DAYS,
                  poll_choices=POLL_SECONDS, redis=info,
                  eviction_warning=info.get("maxmemory_policy") not in (None, "noeviction"))


def stats_json(request: HttpRequest, *, site: AdminSite) -> JsonResponse:
    """The counters the live chart and the summary bar refresh from."""
    stats = api.Stats()
    return JsonResponse({
        "time": time.time(),
        "processed": stats.processed, "failed": stats.failed, "busy": stats.busy,
        "cancelled": stats.cancelled, "expired": stats.expired,
        "enqueued": stats.enqueued, "retries": stats.retry_size,
        "scheduled": stats.scheduled_size, "dead": stats.dead_size,
        "processes": stats.processes_size, "latency": stats.default_queue_latency,
    })

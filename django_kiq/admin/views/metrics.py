"""Metrics: per job name over the last 1/8/24/72 hours, with a histogram of durations."""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse

from django_kiq import api
from django_kiq.stats import HISTOGRAM_MS

from .. import charts
from ..present import duration
from .base import choice, render

HOURS = (1, 8, 24, 72)


def metrics(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    hours = choice(request.GET.get("hours"), HOURS, HOURS[0])
    labels = charts.bucket_labels(HISTOGRAM_MS)
    ticks = charts.bucket_ticks(HISTOGRAM_MS)
    rows = [{"m": m, "chart": charts.bar_chart(m.histogram, labels, ticks=ticks),
             "processed": f"{m.processed:,}", "failed": f"{m.failed:,}",
             "total": duration(m.total_seconds), "avg": duration(m.avg_seconds),
             "failed_pct": round(100 * m.failed / m.processed, 1) if m.processed else 0.0}
            for m in sorted(api.Metrics().summary(hours), key=lambda m: -m.total_seconds)]
    return render(request, site, "metrics.html", title="Metrics", page="metrics", rows=rows,
                  hours=hours, hour_choices=HOURS)

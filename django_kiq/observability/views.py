"""The web process's Prometheus endpoint: queue gauges and cluster-wide totals from Redis.

A plain Django view, run on a request thread; every figure comes from Redis at scrape time
(``prometheus.RedisCollector``, cached a second), so any web process can serve it. Access:
a request carrying ``Authorization: Bearer <KIQ["METRICS_TOKEN"]>`` (when a token is set), or a
logged-in active staff user; anyone else gets 403. Wire it with ``django_kiq.observability.urls``.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from ..conf import get_settings


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    from . import prometheus  # ImproperlyConfigured (a 500, logged) without prometheus_client
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return HttpResponse(generate_latest(prometheus.web_registry()),
                        content_type=CONTENT_TYPE_LATEST)


def allowed(request: HttpRequest) -> bool:
    """The bearer token, compared in constant time, or a staff session."""
    token = get_settings().metrics_token
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(
            header[len("Bearer "):].encode(), token.encode()):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)

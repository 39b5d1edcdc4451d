"""What every page of the console shares: permissions, the admin chrome, actions and messages.

Views run in the web process, one request per call. They read and change jobs only through
:mod:`django_kiq.api` (never Redis); an API error reaches the user as a 500 page or, for an
action, as an error message. Every change is a POST (CSRF-protected by ``admin_view``) that
answers with a redirect and a ``django.contrib.messages`` message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from django_kiq import api
from django_kiq.exceptions import KiqError
from django_kiq.models import Jobs

logger = logging.getLogger("django_kiq.admin")

VIEW_PERM = "django_kiq.view_jobs"
MANAGE_PERM = "django_kiq.manage_jobs"

# (url name, label) of the tabs, in order.
NAV = (
    ("dashboard", "Dashboard"), ("busy", "Busy"), ("queues", "Queues"), ("retries", "Retries"),
    ("scheduled", "Scheduled"), ("dead", "Dead"), ("periodic", "Periodic"), ("metrics", "Metrics"),
    ("limits", "Limits"), ("batches", "Batches"),
)


def kiq_view(view: Callable[..., HttpResponse], *, actions: bool) -> Callable[..., HttpResponse]:
    """Enforce the console's rules: view_jobs to read; manage_jobs and POST to change.

    ``admin_view`` (applied outside this) already sent non-staff users to the login page.
    """

    @wraps(view)
    def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        allowed = ("GET", "HEAD", "POST") if actions else ("GET", "HEAD")
        if request.method not in allowed:
            return HttpResponseNotAllowed(allowed)
        if not request.user.has_perm(VIEW_PERM):
            raise PermissionDenied("django_kiq.view_jobs is required")
        if request.method == "POST" and not request.user.has_perm(MANAGE_PERM):
            raise PermissionDenied("django_kiq.manage_jobs is required")
        return view(request, *args, **kwargs)

    return inner


def url(request: HttpRequest, name: str, *args: Any) -> str:
    """A console URL on the admin site that serves this request (any AdminSite instance)."""
    match = request.resolver_match
    return reverse(f"admin:django_kiq_{name}", args=args,
                   current_app=match.namespace if match else None)


def summary(request: HttpRequest, stats: Any) -> list[dict[str, Any]]:
    """The bar on top of every page: (label, value, link, css) of each counter."""
    rows = (
        ("Processed", stats.processed, "dashboard", "processed"),
        ("Failed", stats.failed, "dashboard", "failed"),
        ("Cancelled", stats.cancelled, "dashboard", "cancelled"),
        ("Expired", stats.expired, "dashboard", "expired"),
        ("Busy", stats.busy, "busy", "busy"),
        ("Enqueued", stats.enqueued, "queues", "enqueued"),
        ("Retries", stats.retry_size, "retries", "retries"),
        ("Scheduled", stats.scheduled_size, "scheduled", "scheduled"),
        ("Dead", stats.dead_size, "dead", "dead"),
    )
    return [{"label": label, "value": f"{value:,}", "url": url(request, page), "key": key}
            for label, value, page, key in rows]


def render(request: HttpRequest, site: AdminSite, template: str, *, title: str, page: str,
           stats: Any = None, crumbs: tuple[tuple[str, str], ...] = (),
           **context: Any) -> TemplateResponse:
    """A console page in the admin chrome: ``each_context``, tabs, summary bar and breadcrumbs.

    ``crumbs`` are (label, url) pairs between the dashboard and the current page.
    """
    stats = stats if stats is not None else api.Stats()
    full = {
        **site.each_context(request),
        "title": title,
        "opts": Jobs._meta,
        "kiq_page": page,
        "kiq_nav": [{"url": url(request, name), "label": label, "active": name == page}
                    for name, label in NAV],
        "kiq_summary": summary(request, stats),
        "kiq_stats_url": url(request, "stats"),
        "kiq_crumbs": crumbs,
        "can_manage": request.user.has_perm(MANAGE_PERM),
        **context,
    }
    return TemplateResponse(request, f"admin/django_kiq/{template}", full)


def back(request: HttpRequest, default: str) -> HttpResponseRedirect:
    """Redirect to the form's ``next`` (same host only) or ``default``."""
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = default
    return HttpResponseRedirect(target)


Outcome = str | tuple[int, str]  # a success message, or (messages level, text)


def perform(request: HttpRequest, what: str, call: Callable[[], Any],
            done: Callable[[Any], Outcome],
            expected: tuple[type[Exception], ...] = (KiqError,)) -> None:
    """Run one API call for an action and report it with the message ``done(result)`` gives.

    An ``expected`` error (django-kiq's own, by default) becomes an error message. Anything
    else (a bug, an unreachable Redis) propagates to Django's 500 handling: nothing is
    swallowed.
    """
    try:
        result = call()
    except expected as exc:
        logger.exception("admin action %r failed", what)
        messages.error(request, f"{what} failed: {exc}")
        return
    outcome = done(result)
    level, text = outcome if isinstance(outcome, tuple) else (messages.SUCCESS, outcome)
    messages.add_message(request, level, text)


def gone(text: str) -> tuple[int, str]:
    """The outcome of an action on jobs that had already left (run, moved or deleted)."""
    return (messages.WARNING, text)


def plural(count: int, noun: str = "job") -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def confirm(request: HttpRequest, site: AdminSite, *, title: str, page: str, question: str,
            action: str, button: str, cancel_url: str, danger: bool,
            fields: dict[str, str] | None = None,
            crumbs: tuple[tuple[str, str], ...] = ()) -> TemplateResponse:
    """The confirmation step of a wide action: the same POST again with ``confirm=yes``."""
    return render(request, site, "confirm.html", title=title, page=page, crumbs=crumbs,
                  question=question, action=action, button=button, cancel_url=cancel_url,
                  danger=danger, fields=sorted((fields or {}).items()))


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirm") == "yes"


def choice(raw: str | None, choices: tuple[int, ...], default: int) -> int:
    """An integer query parameter restricted to ``choices`` (anything else: ``default``)."""
    try:
        value = int(raw) if raw else default
    except ValueError:
        return default
    return value if value in choices else default

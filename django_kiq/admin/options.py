"""The ModelAdmin that mounts the console: URLs, permissions and the admin index entry.

Django includes a ModelAdmin's URLs under ``<app_label>/<model_name>/``, so the pages live at
``/admin/django_kiq/jobs/`` (the dashboard, which is also the model's changelist URL, so the
admin index links straight to it), ``.../busy/``, ``.../queues/<name>/`` and so on. Every view
is wrapped by ``admin_site.admin_view`` (staff login, CSRF, never cached) and by
:func:`~django_kiq.admin.views.base.kiq_view` (the two permissions). The model has no table,
so the add/change/delete views of a normal ModelAdmin are not mounted.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, register_converter

from .converters import TextConverter
from .views import busy, dashboard, job, limits_page, metrics, periodic_page, queues, sets
from .views import batches_page
from .views.base import MANAGE_PERM, VIEW_PERM, kiq_view

# Queue names and entry keys may hold any character (a "/" among them): see converters.py.
register_converter(TextConverter, "kiq_text")


class JobsAdmin(admin.ModelAdmin):
    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm(VIEW_PERM)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(VIEW_PERM) or request.user.has_perm(MANAGE_PERM)

    def get_urls(self) -> list[URLPattern]:
        def page(view: Callable[..., HttpResponse], *, actions: bool = False,
                 **fixed: Any) -> Callable[..., HttpResponse]:
            bound = partial(view, site=self.admin_site, **fixed)
            return self.admin_site.admin_view(kiq_view(bound, actions=actions))

        dash = page(dashboard.dashboard)
        return [
            path("", dash, name="django_kiq_dashboard"),
            # The admin index links to the changelist: the dashboard is that page.
            path("", dash, name="django_kiq_jobs_changelist"),
            path("stats/", page(dashboard.stats_json), name="django_kiq_stats"),
            path("busy/", page(busy.busy, actions=True), name="django_kiq_busy"),
            path("queues/", page(queues.queues), name="django_kiq_queues"),
            path("queues/<kiq_text:name>/", page(queues.queue, actions=True),
                 name="django_kiq_queue"),
            path("queues/<kiq_text:name>/<kiq_text:key>/", page(job.queue_job),
                 name="django_kiq_queue_job"),
            *(path(f"{slug}/", page(sets.job_set, actions=True, slug=slug),
                   name=f"django_kiq_{slug}") for slug in sets.PAGES),
            path("job/<slug:slug>/<kiq_text:key>/", page(job.set_job), name="django_kiq_job"),
            path("find/<kiq_text:jid>/", page(job.find_job), name="django_kiq_find"),
            path("periodic/", page(periodic_page.periodic, actions=True), name="django_kiq_periodic"),
            path("metrics/", page(metrics.metrics), name="django_kiq_metrics"),
            path("limits/", page(limits_page.limits, actions=True), name="django_kiq_limits"),
            path("batches/", page(batches_page.batch_list), name="django_kiq_batches"),
            path("batches/<kiq_text:bid>/", page(batches_page.batch_detail, actions=True),
                 name="django_kiq_batch"),
        ]

"""App configuration: find every app's ``jobs`` module at start-up and register the checks.

``ready()`` runs in every process that sets Django up (web, worker, shell, tests), so all jobs are
registered before anything enqueues or runs one, like ``admin.py`` modules for the admin.
"""

from django.apps import AppConfig
from django.core.signals import setting_changed


class DjangoKiqConfig(AppConfig):
    name = "django_kiq"
    verbose_name = "Background jobs"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
        from .conf import reset_settings
        from .discovery import autodiscover

        setting_changed.connect(reset_settings, dispatch_uid="django_kiq.reset_settings")
        autodiscover()

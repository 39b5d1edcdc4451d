"""The demo app: sample jobs and the ``kiq_demo`` command that enqueues them."""

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "testproject.demo"
    label = "demo"
    verbose_name = "django-kiq demo"

    def ready(self):
        # Importing registers the jobs in every process (worker, server, shell), so the worker
        # can run them whatever the job-discovery settings say.
        from . import jobs  # noqa: F401

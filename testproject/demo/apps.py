"""The demo app: sample jobs and the ``kiq_demo`` command that enqueues them."""

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "testproject.demo"
    label = "demo"
    verbose_name = "django-kiq demo"

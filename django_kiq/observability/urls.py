"""``path("kiq/", include("django_kiq.observability.urls"))`` serves ``kiq/metrics``."""

from django.urls import path

from . import views

urlpatterns = [
    path("metrics", views.metrics, name="kiq-metrics"),
]

"""django-kiq's operations console inside the Django admin (imported by admin autodiscovery).

Registers :class:`~django_kiq.admin.options.JobsAdmin` for the unmanaged
:class:`~django_kiq.models.Jobs` model on the default admin site. A project with its own
``AdminSite`` registers it there too: ``my_site.register(Jobs, JobsAdmin)``.
"""

from django.contrib import admin

from django_kiq.models import Jobs

from .options import JobsAdmin

__all__ = ["JobsAdmin"]

admin.site.register(Jobs, JobsAdmin)

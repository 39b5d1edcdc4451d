"""The admin's anchor: an unmanaged model that owns django-kiq's two permissions.

django-kiq keeps no jobs in the database. ``Jobs`` exists only so the admin index lists
"Background jobs" and so ``auth`` has somewhere to hang ``django_kiq.view_jobs`` (see the pages)
and ``django_kiq.manage_jobs`` (act on jobs and processes). ``managed = False``: its migration
records the model state and the permissions, and creates no table.
"""

from django.db import models


class Jobs(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_jobs", "Can view background jobs, queues and processes"),
            ("manage_jobs", "Can retry, delete and kill jobs, clear queues and stop processes"),
        ]
        verbose_name = "jobs"
        verbose_name_plural = "jobs"

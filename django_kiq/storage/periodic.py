"""Storage verbs of periodic (cron) jobs: tick claims, pause state, last/next run.

A mixin of :class:`~django_kiq.storage.store.Storage`: methods use ``self.client`` and
``self.keys``.
"""


class PeriodicOps:
    pass

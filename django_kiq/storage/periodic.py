"""Storage verbs of periodic (cron) jobs: tick claims, pause state, last/next run.

A mixin of :class:`~django_kiq.storage.store.Storage`: methods use ``self.client`` and
``self.keys``.
"""


class PeriodicOps:
    def _register_periodic_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""

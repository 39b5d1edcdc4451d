"""Storage verbs of the read/manage side (``django_kiq.api``): paging, finding and moving jobs
in queues and in the schedule/retry/dead sets, process control, stats and metrics reads.

A mixin of :class:`~django_kiq.storage.store.Storage`: methods use ``self.client`` and
``self.keys``.
"""


class SetOps:
    def _register_set_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""

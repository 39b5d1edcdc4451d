"""django-kiq: Sidekiq-grade background jobs for Django, on Redis.

The public surface: ``job`` (the decorator) and the exceptions users catch. Everything else is
reached through its module (``django_kiq.api``, ``django_kiq.testing``...).
"""

from .exceptions import EnqueueError, KiqError, PayloadTooLarge, RedisUnavailable
from .registry import Job, job

__version__ = "0.1.0"
__all__ = ["job", "Job", "KiqError", "EnqueueError", "RedisUnavailable", "PayloadTooLarge",
           "__version__"]

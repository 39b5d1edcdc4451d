"""django-kiq: Sidekiq-grade background jobs for Django, on Redis.

The public surface: ``job`` (the decorator), ``current_job()`` (the running job's context) and
the exceptions users catch. Everything else is
reached through its module (``django_kiq.api``, ``django_kiq.testing``...).
"""

from .exceptions import (DuplicateJob, EnqueueError, JobCancelled, JobTimeout, KiqError,
                         PayloadTooLarge, RedisUnavailable)
from .execution import current_job
from .registry import Job, job

__version__ = "0.1.0"
__all__ = ["job", "Job", "current_job", "KiqError", "EnqueueError", "RedisUnavailable",
           "PayloadTooLarge", "JobCancelled", "JobTimeout", "DuplicateJob", "__version__"]

"""django-kiq: Sidekiq-grade background jobs for Django, on Redis.

The public surface: ``job`` (the decorator), ``current_job()`` (the running job's context) and
the exceptions users catch. Everything else is
reached through its module (``django_kiq.api``, ``django_kiq.testing``...).
"""

from .exceptions import (DuplicateJob, EnqueueError, JobCancelled, JobTimeout, KiqError,
                         PayloadTooLarge, RedisUnavailable)
from .execution import current_job
from .registry import Job, job
from .batches import batch
from .canvas import chain, group

__version__ = "0.1.0"
__all__ = ["job", "Job", "current_job", "KiqError", "EnqueueError", "RedisUnavailable",
           "PayloadTooLarge", "JobCancelled", "JobTimeout", "DuplicateJob", "batch", "chain", "group", "__version__"]

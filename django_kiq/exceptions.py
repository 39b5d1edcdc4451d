"""Exceptions django-kiq raises to its users."""


class KiqError(Exception):
    """Base class of every django-kiq error."""


class RedisUnavailable(KiqError):
    """Redis could not be reached or failed mid-command; nothing was (knowingly) written."""


class EnqueueError(RedisUnavailable):
    """A push failed: the job was not enqueued. ``jid`` names the job that was refused."""

    def __init__(self, message: str, jid: str | None = None):
        super().__init__(message)
        self.jid = jid


class MalformedPayload(KiqError):
    """A job hash popped from Redis is not a valid job (bad JSON, missing class or args...)."""


class UnknownJob(KiqError):
    """A job name that no ``@job`` registered in this process."""


class PayloadTooLarge(ValueError, KiqError):
    """The encoded job is larger than ``KIQ["MAX_PAYLOAD_BYTES"]``."""


class JobCancelled(Exception):
    """Raised inside a running job that was cancelled (``api.cancel``, the admin).

    An ``Exception`` so a job can catch it to clean up. A cancelled job is not retried and is
    not counted as failed, whether it re-raises or returns after cleaning up.
    """

    def __init__(self, message: str = "the job was cancelled"):
        super().__init__(message)


class JobTimeout(Exception):
    """Raised inside a job that ran past its time limit (``@job(timeout=...)``).

    An ordinary failure: the job's retry policy applies (``error_class`` "JobTimeout").
    """

    def __init__(self, message: str = "the job ran past its time limit"):
        super().__init__(message)


class DuplicateJob(KiqError):
    """A unique job is already waiting, scheduled, running or pending retry
    (``@job(unique_for=..., unique_conflict="raise")``). ``jid`` is the existing job's."""

    def __init__(self, message: str, jid: str | None = None):
        super().__init__(message)
        self.jid = jid

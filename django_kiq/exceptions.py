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

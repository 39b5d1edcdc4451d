"""Middleware chains around push (client) and around execution (server).

A middleware is a factory, given the next callable in the chain, that returns a callable, as in
Django's request middleware::

    def tag_tenant(next_push):            # client: sees the job hash before it is pushed
        def push(job):
            job["tenant"] = current_tenant()
            return next_push(job)         # return None instead to cancel the push
        return push

    def timing(next_call):                # server: wraps one execution
        def call(ctx):                    # ctx: django_kiq.worker.processor.JobContext
            return next_call(ctx)
        return call

Chains are built once per process from dotted paths (``KIQ["CLIENT_MIDDLEWARE"]``,
``KIQ["SERVER_MIDDLEWARE"]``), in order: the first listed is the outermost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.utils.module_loading import import_string


def build_chain(paths: Sequence[str | Callable], final: Callable,
                builtins: Sequence[Callable] = ()) -> Callable:
    """Wrap ``final``: ``builtins`` first (outermost), then the configured paths, in order."""
    factories = [*builtins, *(import_string(p) if isinstance(p, str) else p for p in paths)]
    handler = final
    for factory in reversed(factories):
        handler = factory(handler)
    return handler

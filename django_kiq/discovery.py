"""Importing the modules that define jobs: every installed app's ``jobs`` (and ``tasks``)
module, then ``KIQ["IMPORTS"]``. Runs once from ``AppConfig.ready()``.

This is the only place django-kiq imports user code, and only from module names the project
configured: never a name read from Redis.
"""

from __future__ import annotations

import importlib

from django.utils.module_loading import autodiscover_modules

from .conf import get_settings


def autodiscover() -> None:
    autodiscover_modules("jobs")
    autodiscover_modules("tasks")
    for module in get_settings().imports:
        importlib.import_module(module)

"""Reading and checking ``settings.OPTIMIZELY`` (and the ``OPTIMIZELY_*`` environment).

Usage::

    from optimizely_middleware.django.config import load_settings

    config = load_settings()   # raises ImproperlyConfigured with a clear message

The keys and their checks are those of every integration
(:mod:`optimizely_middleware.settings.model`); here every mistake becomes an
:class:`~django.core.exceptions.ImproperlyConfigured` that names the key,
what was expected and, for a misspelt key or value, the closest valid one.
Keys of ``settings.OPTIMIZELY`` win over the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from optimizely_middleware.errors import ConfigurationError
from optimizely_middleware.settings.model import (
    DJANGO,
    ENV_PREFIX,
    NoDatafileError,
    OptimizelySettings,
)
from optimizely_middleware.settings.model import load_settings as load_from

__all__ = ["SETTING", "OptimizelySettings", "load_settings", "parse_settings"]

SETTING = "OPTIMIZELY"


def load_settings(environ: Mapping[str, str] | None = None) -> OptimizelySettings:
    """Read ``settings.OPTIMIZELY`` and the environment, and check them."""
    if not hasattr(settings, SETTING):
        try:
            return load_from(None, DJANGO, environ=environ)
        except NoDatafileError as exc:
            raise ImproperlyConfigured(
                "optimizely_middleware.django needs settings.OPTIMIZELY, a dict with a "
                f"datafile or an SDK key, or the {ENV_PREFIX}* environment variables: "
                f"{exc}"
            ) from exc
        except ConfigurationError as exc:
            raise ImproperlyConfigured(str(exc)) from exc
    return parse_settings(getattr(settings, SETTING), environ=environ)


def parse_settings(value: Any, environ: Mapping[str, str] | None = None) -> OptimizelySettings:
    """Check one ``OPTIMIZELY`` dict; raise ImproperlyConfigured on any mistake."""
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"settings.OPTIMIZELY must be a dict, not {type(value).__name__}; for example: "
            f"{DJANGO.example}"
        )
    try:
        return load_from(value, DJANGO, environ=environ)
    except ConfigurationError as exc:
        raise ImproperlyConfigured(str(exc)) from exc

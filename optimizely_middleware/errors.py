"""Exceptions and warnings raised by optimizely_middleware."""

from __future__ import annotations

__all__ = ["ConfigurationError", "EventOutsideScopeError", "WiringWarning"]


class EventOutsideScopeError(RuntimeError):
    """An event arrived outside any request scope and the policy is ``"raise"``."""


class WiringWarning(RuntimeWarning):
    """The set-up would let events bypass the request scope or be lost at shutdown
    (for example the SDK's BatchEventProcessor, or an ASGI server without lifespan)."""


class ConfigurationError(ValueError):
    """A setting is missing, misspelt or has a value that cannot work.

    Raised at start-up (``init_app``, building the middleware, ``create_client``);
    the message names the setting as you wrote it and, for a near miss, the
    closest valid key or value. Django's integration raises it as
    ``ImproperlyConfigured``.
    """

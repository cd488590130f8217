"""Exceptions and warnings raised by optimizely_middleware."""

from __future__ import annotations

__all__ = ["EventOutsideScopeError", "WiringWarning"]


class EventOutsideScopeError(RuntimeError):
    """An event arrived outside any request scope and the policy is ``"raise"``."""


class WiringWarning(RuntimeWarning):
    """The set-up would let events bypass the request scope or be lost at shutdown
    (for example the SDK's BatchEventProcessor, or an ASGI server without lifespan)."""

"""Exceptions and warnings raised by optimizely_middleware."""

from __future__ import annotations

__all__ = ["EventOutsideScopeError", "WiringWarning"]


class EventOutsideScopeError(RuntimeError):
    """An event arrived outside any request scope and the policy is ``"raise"``."""


class WiringWarning(RuntimeWarning):
    """The Optimizely client is wired so that events bypass the request scope."""

"""A testing kit for apps that run Optimizely experiments: capture and assert events.

Usage::

    from optimizely_middleware.testing import EventCapture

    with EventCapture() as events:
        client.get("/checkout")
        events.assert_impression(flag_key="new_checkout", variation_key="on")

With pytest, the ``optimizely_events`` fixture (the package's pytest plugin,
:mod:`.pytest_plugin`) gives a capture installed for one test.

The parts: :mod:`.capture` (the capture and its transport), :mod:`.captured`
(what it records), :mod:`.assertions` (the ``assert_*`` helpers),
:mod:`.unread_responses` (requests whose body a test never read).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimizely_middleware.testing.capture import EventCapture
    from optimizely_middleware.testing.captured import CapturedPost, CapturedRequest
    from optimizely_middleware.wire.payloads import (
        Conversion,
        Impression,
        conversions_in,
        impressions_in,
    )

__all__ = [
    "CapturedPost",
    "CapturedRequest",
    "Conversion",
    "EventCapture",
    "Impression",
    "conversions_in",
    "impressions_in",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the pytest plugin's entry point imports this package in
    # every pytest run, which must not pay for the Optimizely SDK. The capture module
    # holds every exported name (it uses them all).
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module("optimizely_middleware.testing.capture"), name)
    globals()[name] = value
    return value

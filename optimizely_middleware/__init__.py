"""Request-scoped Optimizely event dispatching for WSGI and ASGI apps.

Events the Optimizely SDK produces while a request is handled are collected
and sent as JSON POSTs after the response has gone out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optimizely_middleware.client import check_client, create_client
from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.errors import EventOutsideScopeError, WiringWarning
from optimizely_middleware.scope import RequestScope
from optimizely_middleware.sender import EventSender
from optimizely_middleware.sink import EventSink

if TYPE_CHECKING:
    from optimizely_middleware.asgi import OptimizelyASGIMiddleware
    from optimizely_middleware.wsgi import OptimizelyWSGIMiddleware

__version__ = "0.1.0"

__all__ = [
    "EventOutsideScopeError",
    "EventSender",
    "EventSink",
    "OptimizelyASGIMiddleware",
    "OptimizelyWSGIMiddleware",
    "RequestScope",
    "RequestScopedEventDispatcher",
    "WiringWarning",
    "__version__",
    "check_client",
    "create_client",
]


def __getattr__(name: str) -> Any:
    # The middleware modules are imported on first use so that importing the
    # package stays cheap for code that only needs the dispatcher.
    if name == "OptimizelyWSGIMiddleware":
        from optimizely_middleware.wsgi import OptimizelyWSGIMiddleware

        return OptimizelyWSGIMiddleware
    if name == "OptimizelyASGIMiddleware":
        from optimizely_middleware.asgi import OptimizelyASGIMiddleware

        return OptimizelyASGIMiddleware
    raise AttributeError(f"module 'optimizely_middleware' has no attribute {name!r}")

"""Request-scoped Optimizely event dispatching for WSGI and ASGI apps.

Events the Optimizely SDK produces while a request is handled are collected
and sent as JSON POSTs after the response has gone out.

Usage::

    from optimizely_middleware import (
        OptimizelyWSGIMiddleware,
        RequestScopedEventDispatcher,
        create_client,
    )

    dispatcher = RequestScopedEventDispatcher()
    client = create_client(dispatcher, datafile=datafile_json)
    app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimizely_middleware.client import check_client, create_client
    from optimizely_middleware.delivery.retry import PermanentError, RetryPolicy
    from optimizely_middleware.delivery.sender import EventSender
    from optimizely_middleware.delivery.sink import EventSink
    from optimizely_middleware.delivery.transport import (
        PooledTransport,
        RequestsTransport,
        Transport,
        TransportResponse,
    )
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
    from optimizely_middleware.errors import (
        ConfigurationError,
        EventOutsideScopeError,
        WiringWarning,
    )
    from optimizely_middleware.integrations.asgi import OptimizelyASGIMiddleware
    from optimizely_middleware.integrations.sigterm import install_sigterm_flush
    from optimizely_middleware.integrations.wsgi import OptimizelyWSGIMiddleware
    from optimizely_middleware.processor import RequestScopedEventProcessor
    from optimizely_middleware.scope import request_failed

__version__ = "0.1.0"

# Names are imported on first use: the pytest plugin entry point imports this
# package in every pytest run, which must not pay for the Optimizely SDK.
_EXPORTS = {
    "ConfigurationError": "optimizely_middleware.errors",
    "EventOutsideScopeError": "optimizely_middleware.errors",
    "EventSender": "optimizely_middleware.delivery.sender",
    "EventSink": "optimizely_middleware.delivery.sink",
    "OptimizelyASGIMiddleware": "optimizely_middleware.integrations.asgi",
    "OptimizelyWSGIMiddleware": "optimizely_middleware.integrations.wsgi",
    "PermanentError": "optimizely_middleware.delivery.retry",
    "PooledTransport": "optimizely_middleware.delivery.transport",
    "RequestScopedEventDispatcher": "optimizely_middleware.dispatcher",
    "RequestScopedEventProcessor": "optimizely_middleware.processor",
    "RequestsTransport": "optimizely_middleware.delivery.transport",
    "RetryPolicy": "optimizely_middleware.delivery.retry",
    "Transport": "optimizely_middleware.delivery.transport",
    "TransportResponse": "optimizely_middleware.delivery.transport",
    "WiringWarning": "optimizely_middleware.errors",
    "check_client": "optimizely_middleware.client",
    "create_client": "optimizely_middleware.client",
    "install_sigterm_flush": "optimizely_middleware.integrations.sigterm",
    "request_failed": "optimizely_middleware.scope",
}

__all__ = [
    "ConfigurationError",
    "EventOutsideScopeError",
    "EventSender",
    "EventSink",
    "OptimizelyASGIMiddleware",
    "OptimizelyWSGIMiddleware",
    "PermanentError",
    "PooledTransport",
    "RequestScopedEventDispatcher",
    "RequestScopedEventProcessor",
    "RequestsTransport",
    "RetryPolicy",
    "Transport",
    "TransportResponse",
    "WiringWarning",
    "__version__",
    "check_client",
    "create_client",
    "install_sigterm_flush",
    "request_failed",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optimizely_middleware' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if "uwsgi" in sys.modules:
    # Inside uWSGI: warn if its Python threads are off, chain uwsgi.atexit.
    from optimizely_middleware.process.uwsgi import check_uwsgi

    check_uwsgi()

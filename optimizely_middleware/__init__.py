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
    from optimizely_middleware.asgi import OptimizelyASGIMiddleware
    from optimizely_middleware.client import check_client, create_client
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
    from optimizely_middleware.encoding import EventEncoder, PendingUserEvent
    from optimizely_middleware.errors import (
        ConfigurationError,
        EventOutsideScopeError,
        WiringWarning,
    )
    from optimizely_middleware.processor import RequestScopedEventProcessor
    from optimizely_middleware.scope import RequestScope
    from optimizely_middleware.sender import EventSender
    from optimizely_middleware.signals import install_sigterm_flush
    from optimizely_middleware.sink import EventSink
    from optimizely_middleware.wsgi import OptimizelyWSGIMiddleware

__version__ = "0.1.0"

# Names are imported on first use: the pytest plugin entry point imports this
# package in every pytest run, which must not pay for the Optimizely SDK.
_EXPORTS = {
    "ConfigurationError": "optimizely_middleware.errors",
    "EventEncoder": "optimizely_middleware.encoding",
    "EventOutsideScopeError": "optimizely_middleware.errors",
    "EventSender": "optimizely_middleware.sender",
    "EventSink": "optimizely_middleware.sink",
    "OptimizelyASGIMiddleware": "optimizely_middleware.asgi",
    "OptimizelyWSGIMiddleware": "optimizely_middleware.wsgi",
    "PendingUserEvent": "optimizely_middleware.encoding",
    "RequestScope": "optimizely_middleware.scope",
    "RequestScopedEventDispatcher": "optimizely_middleware.dispatcher",
    "RequestScopedEventProcessor": "optimizely_middleware.processor",
    "WiringWarning": "optimizely_middleware.errors",
    "check_client": "optimizely_middleware.client",
    "create_client": "optimizely_middleware.client",
    "install_sigterm_flush": "optimizely_middleware.signals",
}

__all__ = [
    "ConfigurationError",
    "EventEncoder",
    "EventOutsideScopeError",
    "EventSender",
    "EventSink",
    "OptimizelyASGIMiddleware",
    "OptimizelyWSGIMiddleware",
    "PendingUserEvent",
    "RequestScope",
    "RequestScopedEventDispatcher",
    "RequestScopedEventProcessor",
    "WiringWarning",
    "__version__",
    "check_client",
    "create_client",
    "install_sigterm_flush",
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
    from optimizely_middleware.servers import check_uwsgi

    check_uwsgi()

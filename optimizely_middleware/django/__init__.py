"""Django integration: a ``MIDDLEWARE`` entry configured from ``settings.OPTIMIZELY``.

Usage (``settings.py``)::

    MIDDLEWARE = [
        "optimizely_middleware.django.OptimizelyMiddleware",
        ...
    ]
    OPTIMIZELY = {
        "DATAFILE_PATH": BASE_DIR / "datafile.json",   # or "SDK_KEY": "..."
        "FAILED_REQUESTS": "keep",
    }

In views the client is ``request.optimizely``; elsewhere :func:`get_client`.
Under an ASGI server, serve :func:`asgi_application` (see its docstring) so
the last events are delivered when the server stops.
"""

from __future__ import annotations

from optimizely_middleware.django.asgi import asgi_application
from optimizely_middleware.django.config import OptimizelySettings
from optimizely_middleware.django.middleware import OptimizelyMiddleware
from optimizely_middleware.django.state import (
    DjangoOptimizely,
    get_client,
    get_dispatcher,
    get_state,
    reset,
)
from optimizely_middleware.django.visitor import visitor_id

__all__ = [
    "DjangoOptimizely",
    "OptimizelyMiddleware",
    "OptimizelySettings",
    "asgi_application",
    "get_client",
    "get_dispatcher",
    "get_state",
    "reset",
    "visitor_id",
]

"""Django's ASGI application with a lifespan that flushes Optimizely events at shutdown.

Usage (``asgi.py``)::

    import os

    from django.core.asgi import get_asgi_application

    from optimizely_middleware.django import asgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    application = asgi_application(get_asgi_application())
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizely_middleware.django.state import get_state
from optimizely_middleware.integrations.asgi import OptimizelyASGIMiddleware

if TYPE_CHECKING:
    from optimizely_middleware.integrations.asgi_common import ASGIApp

__all__ = ["asgi_application"]


def asgi_application(application: ASGIApp | None = None) -> OptimizelyASGIMiddleware:
    """Wrap Django's ASGI application so that a server's shutdown delivers the last events.

    Django's ``ASGIHandler`` does not speak the lifespan protocol and
    uvicorn re-raises ``SIGTERM`` after its graceful shutdown, so no
    ``atexit`` handler runs there. The returned
    :class:`~optimizely_middleware.OptimizelyASGIMiddleware` answers the
    lifespan protocol for Django and, on ``lifespan.shutdown``, flushes and
    closes the dispatcher within ``settings.OPTIMIZELY["SHUTDOWN_TIMEOUT"]``
    seconds before the server exits. It also owns each HTTP request's scope
    (handed over when Django's handler has sent the response and closed
    it); :class:`~optimizely_middleware.django.OptimizelyMiddleware` in
    ``MIDDLEWARE`` then joins that scope and sets ``request.optimizely``.

    Without ``application``, Django's ``get_asgi_application()`` is called.
    Settings mistakes raise :class:`~django.core.exceptions.ImproperlyConfigured`
    here, at startup.

    Example::

        application = asgi_application(get_asgi_application())
    """
    if application is None:
        from django.core.asgi import get_asgi_application

        application = get_asgi_application()
    state = get_state()
    return OptimizelyASGIMiddleware(
        application,
        state.dispatcher,
        client=state.client,
        shutdown_timeout=state.settings.shutdown_timeout,
    )

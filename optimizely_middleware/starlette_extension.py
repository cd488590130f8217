"""Starlette and FastAPI in one line: client, dispatcher, middleware and shutdown flush.

Usage::

    from starlette.applications import Starlette
    from optimizely_middleware.starlette import OptimizelyStarlette, optimizely_client

    app = Starlette(routes=routes)
    optimizely = OptimizelyStarlette(app)   # OPTIMIZELY_DATAFILE_PATH / OPTIMIZELY_SDK_KEY ...

    async def checkout(request):
        user = optimizely_client(request).create_user_context("user-1")
        ...

Import it as ``optimizely_middleware.starlette.OptimizelyStarlette`` (or, for
FastAPI, ``optimizely_middleware.fastapi.OptimizelyFastAPI``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from optimizely_middleware.dispatcher import (
    FailedRequestPolicy,
    OutsideScopePolicy,
    RequestScopedEventDispatcher,
)
from optimizely_middleware.integrations.adapters import client_and_dispatcher
from optimizely_middleware.integrations.asgi import OptimizelyASGIMiddleware
from optimizely_middleware.settings.model import keywords_of, load_settings

if TYPE_CHECKING:
    from os import PathLike

    from optimizely.optimizely import Optimizely
    from starlette.applications import Starlette
    from typing_extensions import Unpack

__all__ = ["OptimizelyOptions", "OptimizelyStarlette"]


class OptimizelyOptions(TypedDict, total=False):
    """The settings keywords of :class:`OptimizelyStarlette` (see docs/configuration.md)."""

    datafile_path: str | PathLike[str]
    datafile: str
    sdk_key: str
    event_endpoint: str | None
    failed_requests: FailedRequestPolicy
    outside_scope: OutsideScopePolicy
    shutdown_timeout: float
    max_events_per_request: int
    client_options: Mapping[str, Any]


class OptimizelyStarlette:
    """Adds request-scoped Optimizely events to a Starlette (or FastAPI) app.

    ``init_app(app)`` (or ``OptimizelyStarlette(app)``) reads the settings,
    the keywords given here over the ``OPTIMIZELY_*`` environment variables
    (the keys of docs/configuration.md), checks them (a mistake raises
    :class:`~optimizely_middleware.errors.ConfigurationError` naming the
    key), builds the dispatcher and a correctly wired client, and adds
    :class:`~optimizely_middleware.OptimizelyASGIMiddleware` with them. The
    middleware flushes the dispatcher at the server's lifespan shutdown,
    after the app's own lifespan code; keep uvicorn's lifespan on.

    Endpoints reach the client as ``optimizely_client(request)`` or
    ``request.state.optimizely`` (FastAPI: the ``OptimizelyClient``
    dependency); other code as ``optimizely.client``.

    ``dispatcher=`` shares one you built (its settings keys are then not
    used); ``client=`` uses a client you built (checked for wiring; without
    ``dispatcher=``, the one it forwards to). ``environ=`` replaces
    ``os.environ`` (``{}``: read no environment).

    Add it after the app's other middleware (``add_middleware`` puts the
    newest outermost), so that their events belong to the request too.

    Example::

        app = Starlette(routes=routes, lifespan=lifespan)
        optimizely = OptimizelyStarlette(app, event_endpoint="http://127.0.0.1:8765/v1/events")
    """

    def __init__(
        self,
        app: Starlette | None = None,
        *,
        dispatcher: RequestScopedEventDispatcher | None = None,
        client: Optimizely | None = None,
        environ: Mapping[str, str] | None = None,
        **settings: Unpack[OptimizelyOptions],
    ) -> None:
        self._given_dispatcher = dispatcher
        self._given_client = client
        self._environ = environ
        self._values: dict[str, Any] = dict(settings)
        self._source = keywords_of(type(self).__name__)
        # A misspelt keyword is reported here, before any app is set up.
        load_settings(self._values, self._source, environ={}, require_datafile=False)
        self._client: Optimizely | None = None
        self._dispatcher: RequestScopedEventDispatcher | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Starlette) -> None:
        """Check the settings, build client and dispatcher, add the middleware."""
        if self._dispatcher is not None:
            raise RuntimeError(
                f"{type(self).__name__} is already set up on an app; make one per app."
            )
        settings = load_settings(
            self._values,
            self._source,
            environ=self._environ,
            require_datafile=self._given_client is None,
        )
        client, dispatcher = client_and_dispatcher(
            type(self).__name__,
            settings,
            dispatcher=self._given_dispatcher,
            client=self._given_client,
        )
        app.add_middleware(
            OptimizelyASGIMiddleware,
            dispatcher=dispatcher,
            client=client,
            shutdown_timeout=settings.shutdown_timeout,
        )
        self._client, self._dispatcher = client, dispatcher

    @property
    def client(self) -> Optimizely:
        """The Optimizely client (for code outside requests)."""
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__}.init_app(app) has not been called.")
        return self._client

    @property
    def dispatcher(self) -> RequestScopedEventDispatcher:
        """The dispatcher: ``flush(timeout)``, ``stats()``, ``request_scope()``."""
        if self._dispatcher is None:
            raise RuntimeError(f"{type(self).__name__}.init_app(app) has not been called.")
        return self._dispatcher

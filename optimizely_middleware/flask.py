"""Flask integration: an extension for the whole app and a decorator for one view.

Usage::

    from flask import Flask
    from optimizely_middleware.flask import OptimizelyFlask, current_optimizely

    optimizely = OptimizelyFlask()

    app = Flask(__name__)
    app.config["OPTIMIZELY_DATAFILE_PATH"] = "datafile.json"   # or OPTIMIZELY_SDK_KEY
    optimizely.init_app(app)

    @app.get("/checkout")
    def checkout():
        user = current_optimizely.create_user_context("user-1", {"plan": "pro"})
        decision = user.decide("new_checkout")
        return "new" if decision.enabled else "old"

Or, for a single view and no middleware::

    @app.get("/checkout")
    @defer_events(dispatcher)
    def checkout(): ...
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Flask, Response, current_app, has_app_context
from werkzeug.exceptions import HTTPException
from werkzeug.local import LocalProxy

from optimizely_middleware.client import Datafile, datafile_text
from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.integrations.adapters import (
    client_and_dispatcher,
    decorator_dispatcher,
    owned_by_outer,
)
from optimizely_middleware.integrations.wsgi import OptimizelyWSGIMiddleware, ScopedRequest
from optimizely_middleware.process import hooks
from optimizely_middleware.scope import request_failed
from optimizely_middleware.settings.model import (
    DATAFILE_SOURCES,
    ENV_PREFIX,
    FLASK,
    OptimizelySettings,
    load_settings,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from optimizely.optimizely import Optimizely

__all__ = ["OptimizelyFlask", "OptimizelyState", "current_optimizely", "defer_events"]

logger = logging.getLogger("optimizely_middleware")

EXTENSION_KEY = "optimizely"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class OptimizelyState:
    """What :class:`OptimizelyFlask` keeps in ``app.extensions["optimizely"]``."""

    client: Optimizely
    dispatcher: RequestScopedEventDispatcher
    shutdown_timeout: float


class OptimizelyFlask:
    """The Flask extension: every request of the app gets request-scoped events.

    ``init_app`` builds (or takes) a :class:`RequestScopedEventDispatcher` and
    a correctly wired Optimizely client, mounts
    :class:`~optimizely_middleware.OptimizelyWSGIMiddleware` on
    ``app.wsgi_app``, keeps both in ``app.extensions["optimizely"]`` and
    closes the dispatcher when the process exits (within
    ``OPTIMIZELY_SHUTDOWN_TIMEOUT`` seconds, so the events of the last
    requests are delivered; gunicorn workers run it on a graceful stop).

    Views reach the client as :data:`current_optimizely` or ``ext.client``.

    The settings are the ``OPTIMIZELY_*`` keys of ``app.config``, then the
    ``OPTIMIZELY_*`` environment variables (:mod:`optimizely_middleware.settings.model`;
    the table is in docs/configuration.md): ``OPTIMIZELY_DATAFILE_PATH``,
    ``OPTIMIZELY_DATAFILE`` or ``OPTIMIZELY_SDK_KEY``, and
    ``OPTIMIZELY_EVENT_ENDPOINT``, ``OPTIMIZELY_FAILED_REQUESTS``,
    ``OPTIMIZELY_OUTSIDE_SCOPE``, ``OPTIMIZELY_MAX_EVENTS_PER_REQUEST``,
    ``OPTIMIZELY_SHUTDOWN_TIMEOUT``, ``OPTIMIZELY_CLIENT_OPTIONS``,
    ``OPTIMIZELY_CLOSE_AT_EXIT``. A mistake (an unknown key, a datafile that
    cannot be used, an endpoint without a scheme) raises
    :class:`~optimizely_middleware.errors.ConfigurationError` from ``init_app``.

    Arguments given here win over both:

    * ``datafile`` (JSON text or a path) and ``sdk_key``: where the datafile
      comes from.
    * ``dispatcher``: share one; the dispatcher keys are then not used.
    * ``client``: a client you built; checked for wiring. Without
      ``dispatcher``, the one it forwards to is used.

    Example::

        optimizely = OptimizelyFlask()

        def create_app():
            app = Flask(__name__)
            app.config.from_prefixed_env()   # FLASK_OPTIMIZELY_SDK_KEY=...
            optimizely.init_app(app)
            return app
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        datafile: Datafile | None = None,
        sdk_key: str | None = None,
        dispatcher: RequestScopedEventDispatcher | None = None,
        client: Optimizely | None = None,
    ) -> None:
        self._datafile = datafile
        self._sdk_key = sdk_key
        self._dispatcher = dispatcher
        self._client = client
        # The state of the only app set up so far, for use outside an app context.
        self._single_state: OptimizelyState | None = None
        self._apps = 0
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set the app up: client, dispatcher, middleware and exit hook."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("OptimizelyFlask is already set up on this app.")
        settings = self._settings_from(app.config)
        client, dispatcher = client_and_dispatcher(
            "OptimizelyFlask", settings, dispatcher=self._dispatcher, client=self._client
        )
        state = OptimizelyState(
            client=client,
            dispatcher=dispatcher,
            shutdown_timeout=settings.shutdown_timeout,
        )
        app.extensions[EXTENSION_KEY] = state
        self._apps += 1
        self._single_state = state if self._apps == 1 else None
        # The client was checked above (or built right), so it is not passed here.
        app.wsgi_app = OptimizelyWSGIMiddleware(app.wsgi_app, dispatcher)  # type: ignore[method-assign]
        if settings.close_at_exit:
            at_exit = functools.partial(close_at_exit, weakref.ref(state))
            gone = weakref.finalize(state, hooks.on_exit("close_apps", at_exit))
            gone.atexit = False  # removed when the app goes, not before it is closed at exit

    def _settings_from(self, config: Mapping[str, Any]) -> OptimizelySettings:
        """``app.config``'s ``OPTIMIZELY_*`` keys and the environment, checked; the
        extension's own ``datafile=``/``sdk_key=`` replace where the datafile comes from."""
        values = {key: value for key, value in config.items() if key.startswith(ENV_PREFIX)}
        if self._datafile is not None or self._sdk_key is not None:
            for key in DATAFILE_SOURCES:
                values.pop(ENV_PREFIX + key, None)
            if self._datafile is not None:
                values[ENV_PREFIX + "DATAFILE"] = datafile_text(self._datafile)
            if self._sdk_key is not None:
                values[ENV_PREFIX + "SDK_KEY"] = self._sdk_key
        return load_settings(values, FLASK, require_datafile=self._client is None)

    @property
    def state(self) -> OptimizelyState:
        """The current app's client and dispatcher.

        Outside an app context, that of the app when only one was set up.
        """
        if not has_app_context() and self._single_state is not None:
            return self._single_state
        return current_state()

    @property
    def client(self) -> Optimizely:
        """The current app's Optimizely client."""
        if self._client is not None:
            return self._client
        return self.state.client

    @property
    def dispatcher(self) -> RequestScopedEventDispatcher:
        """The current app's dispatcher (``flush()``, ``stats()``, ...)."""
        if self._dispatcher is not None:
            return self._dispatcher
        return self.state.dispatcher


def current_state() -> OptimizelyState:
    """The current app's :class:`OptimizelyState`."""
    try:
        return cast(OptimizelyState, current_app.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError(
            "OptimizelyFlask.init_app(app) has not been called for this app."
        ) from None


#: The current app's Optimizely client (a proxy, like ``flask.current_app``).
current_optimizely: Optimizely = cast("Optimizely", LocalProxy(lambda: current_state().client))


def close_at_exit(state_ref: weakref.ref[OptimizelyState]) -> None:
    """Deliver what is queued and stop the sender when the process exits."""
    state = state_ref()
    if state is None:
        return
    started = time.monotonic()
    try:
        state.dispatcher.close(state.shutdown_timeout)
    except Exception:
        logger.exception("Closing the Optimizely event dispatcher at exit failed")
        return
    logger.debug("Optimizely dispatcher closed at exit in %.3f s", time.monotonic() - started)


def defer_events(dispatcher: RequestScopedEventDispatcher) -> Callable[[F], F]:
    """Collect one view's events and hand them over after its response was written.

    For apps that do not mount the middleware, or to scope just a few views.
    Works with sync and ``async`` views and with streaming and ``send_file``
    responses. Behind :class:`OptimizelyWSGIMiddleware` (or the extension) of
    the same dispatcher it just calls the view, so nothing is sent twice.

    Example::

        @app.get("/checkout")
        @defer_events(dispatcher)
        def checkout():
            decision = client.create_user_context(user_id).decide("new_checkout")
            ...
    """
    dispatcher = decorator_dispatcher("optimizely_middleware.flask", dispatcher)

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def deferred_view(*args: Any, **kwargs: Any) -> Any:
            # ensure_sync runs an async view through asgiref, which copies the
            # current context into the coroutine: the activated scope included.
            call = current_app.ensure_sync(view)
            if owned_by_outer(dispatcher):
                return call(*args, **kwargs)
            request = ScopedRequest(dispatcher, failed_by=view_failed)
            with request:
                response = current_app.make_response(call(*args, **kwargs))
            defer_until_closed(response, request)
            return response

        return cast(F, deferred_view)

    return decorator


def view_failed(exc: BaseException) -> bool:
    """:func:`~optimizely_middleware.request_failed` for what a view raised."""
    if isinstance(exc, HTTPException):
        # Flask answers it with its own status (ClientDisconnected: 400).
        return request_failed(status=exc.code or 500)
    return request_failed(exc=exc)


def defer_until_closed(response: Response, request: ScopedRequest) -> None:
    """Hand ``request``'s events over once the server has written ``response``'s body.

    ``call_on_close`` is not enough: for a ``direct_passthrough`` response
    (``send_file``) werkzeug returns the body itself to the server, so the
    response's close hooks never run. Instead the body that
    ``get_app_iter`` returns is handled like the middleware handles it. If
    the response object is dropped unserved (an ``after_request`` function
    replaced it), the events are handed over when it is collected.
    """
    request.watch(response)
    response_ref = weakref.ref(response)  # a strong reference would be a cycle
    get_app_iter = type(response).get_app_iter

    def get_app_iter_in_scope(environ: WSGIEnvironment) -> Any:
        current = response_ref()
        assert current is not None  # it is being called
        if request_failed(status=current.status_code):
            request.scope.mark_failed()
        return request.attach(get_app_iter(current, environ), environ)

    response.get_app_iter = get_app_iter_in_scope  # type: ignore[method-assign]

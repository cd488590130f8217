"""Starlette integration: the extension, a decorator for single endpoints, the client.

Usage::

    from optimizely_middleware.starlette import OptimizelyStarlette, optimizely_client

    app = Starlette(routes=routes)
    OptimizelyStarlette(app)      # settings from OPTIMIZELY_* variables or keywords

    async def checkout(request):
        user = optimizely_client(request).create_user_context("user-1")
        ...

For one endpoint without the middleware::

    from optimizely_middleware.starlette import defer_events

    @defer_events(dispatcher)
    async def checkout(request):
        user = client.create_user_context(request.query_params["user"])
        decision = user.decide("new_checkout")
        return JSONResponse({"variation": decision.variation_key})

When :class:`~optimizely_middleware.OptimizelyASGIMiddleware` is given the
client (``client=``), endpoints read it with ``optimizely_client(request)``
(or ``request.state.optimizely``); in FastAPI it is a dependency::

    @app.get("/checkout")
    def checkout(client: Annotated[Optimizely, Depends(optimizely_client)]): ...
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from optimizely.optimizely import Optimizely
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.integrations.adapters import (
    RequestInScope,
    decorator_dispatcher,
    owned_by_outer,
)
from optimizely_middleware.integrations.asgi_common import STATE_KEY, ObservedCall
from optimizely_middleware.scope import RequestScope, request_failed
from optimizely_middleware.starlette_extension import OptimizelyOptions, OptimizelyStarlette

__all__ = [
    "DeferredResponse",
    "OptimizelyOptions",
    "OptimizelyStarlette",
    "defer_events",
    "optimizely_client",
]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def defer_events(dispatcher: RequestScopedEventDispatcher) -> Callable[[Endpoint], Endpoint]:
    """Hand the Optimizely events of one endpoint over after its response is sent.

    For a Starlette endpoint without the middleware: async functions, sync
    functions (run in the thread pool) and ``HTTPEndpoint`` methods. The
    endpoint's response is returned wrapped in a :class:`DeferredResponse`, so
    events fired while the body streams and in the response's background tasks
    belong to the request, and are handed over once, after all of them. Under
    :class:`~optimizely_middleware.OptimizelyASGIMiddleware` of the same
    dispatcher the decorator does nothing, so events are never sent twice.

    Put it above any decorator that replaces the response.

    Example::

        @defer_events(dispatcher)
        def checkout(request: Request) -> Response:
            client.create_user_context("user-1").track_event("purchase")
            return PlainTextResponse("thanks")

    It is for Starlette endpoints, which take the request and return a
    ``Response``; a FastAPI path operation (other parameters, or data to
    serialise) is refused when decorated: use ``OptimizelyFastAPI(app)``.
    """
    dispatcher = decorator_dispatcher("optimizely_middleware.starlette", dispatcher)

    def decorate(endpoint: Endpoint) -> Endpoint:
        check_starlette_endpoint(endpoint)
        if is_async_callable(endpoint):

            @functools.wraps(endpoint)
            async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
                if not args:
                    raise_called_by_fastapi(endpoint)
                if owned_by_outer(dispatcher):
                    return await endpoint(*args, **kwargs)
                request = RequestInScope(dispatcher, failed_by=endpoint_failed)
                with request:
                    response = await endpoint(*args, **kwargs)
                return DeferredResponse(response, dispatcher, request.scope)

            return cast(Endpoint, async_endpoint)

        @functools.wraps(endpoint)
        def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
            # Runs in the thread pool, in a copy of the request's context: the
            # scope opened here is the one the endpoint's events go to.
            if not args:
                raise_called_by_fastapi(endpoint)
            if owned_by_outer(dispatcher):
                return endpoint(*args, **kwargs)
            request = RequestInScope(dispatcher, failed_by=endpoint_failed)
            with request:
                response = endpoint(*args, **kwargs)
            return DeferredResponse(response, dispatcher, request.scope)

        return cast(Endpoint, sync_endpoint)

    return decorate


FASTAPI_HINT = (
    "defer_events wraps the Response of a Starlette endpoint; FastAPI builds the response "
    "after the path operation returns, so it cannot be deferred this way. For FastAPI add "
    "the package to the app instead: OptimizelyFastAPI(app) from optimizely_middleware.fastapi "
    "(or app.add_middleware(OptimizelyASGIMiddleware, dispatcher=..., client=...)), and take "
    "the client as a dependency, OptimizelyClient."
)


def check_starlette_endpoint(endpoint: Callable[..., Any]) -> None:
    """Refuse, when decorating, what Starlette cannot call as ``endpoint(request)``.

    A Starlette endpoint (or ``HTTPEndpoint`` method, after ``self``) takes
    one argument, the request, and returns a ``Response``; more parameters,
    or a return annotation that is not a response, mean a FastAPI path
    operation.
    """
    name = getattr(endpoint, "__qualname__", repr(endpoint))
    try:
        signature = inspect.signature(endpoint)
    except (TypeError, ValueError):
        return
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if any(p.kind in variadic for p in signature.parameters.values()):
        return  # another decorator's wrapper: nothing to tell from its signature
    parameters = list(signature.parameters.values())
    if [p.name for p in parameters[:1]] in (["self"], ["cls"]):
        parameters = parameters[1:]
    if len(parameters) != 1:
        names = ", ".join(p.name for p in parameters)
        raise TypeError(
            f"@defer_events(dispatcher) on {name}({names}): a Starlette endpoint takes one "
            f"argument, the request. {FASTAPI_HINT}"
        )
    takes = parameters[0].annotation
    if takes is not inspect.Parameter.empty and not _names(takes, HTTPConnection):
        raise TypeError(
            f"@defer_events(dispatcher) on {name}({parameters[0].name}: "
            f"{getattr(takes, '__name__', takes)}): a Starlette "
            f"endpoint takes the request. {FASTAPI_HINT}"
        )
    returns = signature.return_annotation
    if returns is not inspect.Signature.empty and not _names(returns, Response):
        raise TypeError(
            f"@defer_events(dispatcher) on {name} -> {getattr(returns, '__name__', returns)}: "
            "the endpoint must return a "
            f"Starlette Response. {FASTAPI_HINT}"
        )


def _names(annotation: object, kind: type) -> bool:
    """Whether ``annotation`` can be ``kind`` (a string one is given the benefit of the doubt
    when it mentions a request or response, as in ``from __future__ import annotations``)."""
    if isinstance(annotation, str):
        words = ("Request", "WebSocket", "HTTPConnection", "Response", "Any")
        return any(word in annotation for word in words)
    if annotation is Any or annotation is object:
        return True
    if isinstance(annotation, type):
        return issubclass(annotation, kind) or issubclass(kind, annotation)
    return True  # a Union, a TypeVar...: leave it to the call


def raise_called_by_fastapi(endpoint: Callable[..., Any]) -> None:
    """FastAPI calls a path operation with keywords only; Starlette passes the request."""
    name = getattr(endpoint, "__qualname__", repr(endpoint))
    raise TypeError(f"@defer_events(dispatcher) on {name}, called by FastAPI. {FASTAPI_HINT}")


def endpoint_failed(exc: BaseException) -> bool:
    """:func:`~optimizely_middleware.request_failed` for what an endpoint raised."""
    if isinstance(exc, HTTPException):
        return request_failed(status=exc.status_code)  # Starlette answers with that status
    # request.body()/stream()/form() raise ClientDisconnect on an http.disconnect.
    return request_failed(exc=exc, disconnected=isinstance(exc, ClientDisconnect))


class DeferredResponse:
    """An endpoint's response, sent inside its request scope.

    The scope is handed over once the response (its body and its background
    tasks) has been sent, or has failed to. Attributes are read through to the
    wrapped ``response``.
    """

    __slots__ = ("dispatcher", "request", "response")

    def __init__(
        self, response: ASGIApp, dispatcher: RequestScopedEventDispatcher, request: RequestScope
    ) -> None:
        self.response = response
        self.dispatcher = dispatcher
        self.request = request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await ObservedCall(self.dispatcher, self.request).run(self.response, scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        if name in self.__slots__:
            raise AttributeError(name)
        return getattr(self.response, name)


def optimizely_client(connection: HTTPConnection) -> Optimizely:
    """The Optimizely client given to the middleware (``client=``).

    Works as a FastAPI dependency too:
    ``client: Annotated[Optimizely, Depends(optimizely_client)]``.
    """
    client = connection.scope.get("state", {}).get(STATE_KEY)
    if client is None:
        raise RuntimeError(
            "No Optimizely client on this request: pass client=... to "
            "OptimizelyASGIMiddleware (app.add_middleware(OptimizelyASGIMiddleware, "
            "dispatcher=dispatcher, client=client))."
        )
    return cast(Optimizely, client)


def is_async_callable(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(obj.__call__)
    )

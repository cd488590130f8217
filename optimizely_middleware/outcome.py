"""Did a request fail? The one rule every framework adapter applies.

A failed request is what the dispatcher's ``failed_requests`` policy acts on
(``"discard"`` drops its events). The WSGI and ASGI middleware, the Flask and
Starlette decorators and the Django middleware all decide it here, so the
same client disconnect, the same 5xx, the same cancellation, has the same
outcome whatever the framework.

Usage::

    from optimizely_middleware.outcome import request_failed

    try:
        await app(scope, receive, observed_send)
    except BaseException as exc:
        failed = request_failed(status=status, exc=exc, disconnected=client_gone)
        raise
    else:
        failed = request_failed(status=status, disconnected=client_gone)
    finally:
        dispatcher.close_scope(request, failed=failed)
"""

from __future__ import annotations

__all__ = ["request_failed"]


def request_failed(
    *,
    status: int | None = None,
    exc: BaseException | None = None,
    disconnected: bool = False,
) -> bool:
    """Return True when a request counts as failed.

    * ``status``: the HTTP status the response started with, if it started.
      A 5xx status is a failure, whatever happens afterwards (the client
      going away included): the app itself answered that it failed. Any
      other status is not.
    * ``exc``: what the app raised, if anything. An ``Exception`` (an
      ``ExceptionGroup`` too) is a failure, unless the client had
      disconnected. A ``BaseException`` that is not an ``Exception`` is
      *not* a failure: ``asyncio.CancelledError`` (also anyio's cancellation
      on asyncio), trio's ``Cancelled``, ``GeneratorExit``,
      ``KeyboardInterrupt`` and ``SystemExit`` stop a request from outside
      (a client that went away, a server that shuts down or times a worker
      out); they say nothing about the app. A ``BaseExceptionGroup`` is a
      failure when one of its exceptions is.
    * ``disconnected``: the client went away before the response was
      complete. That is not a failure, and neither is whatever the app
      raised as a result (``OSError`` or ``ClientDisconnect`` from a send,
      an error from a read after ``http.disconnect``,
      ``WebSocketDisconnect``): the events were fired by decisions the user
      was being shown.

    What counts as a disconnect is for the adapter to observe: an
    ``OSError`` from the server's ``send`` (ASGI 2.4), an
    ``http.disconnect`` / ``websocket.disconnect`` from ``receive``, the
    framework's own disconnect exception (Starlette's ``ClientDisconnect``),
    a WSGI server closing the body before its last chunk. An exception that
    the framework turns into an HTTP response of its own (werkzeug's and
    Starlette's ``HTTPException``) is judged by that response's status: pass
    ``status=``, not ``exc=``.

    Example::

        >>> request_failed(status=503)
        True
        >>> request_failed(status=200, exc=ValueError("bug"))
        True
        >>> request_failed(status=200, exc=OSError("gone"), disconnected=True)
        False
        >>> import asyncio
        >>> request_failed(exc=asyncio.CancelledError())
        False
    """
    if status is not None and status >= 500:
        return True
    if exc is None or disconnected:
        return False
    return _is_failure(exc)


def _is_failure(exc: BaseException) -> bool:
    if isinstance(exc, Exception):
        return True
    # A BaseExceptionGroup (Python 3.11+ or the exceptiongroup backport) that
    # holds an Exception next to the cancellations.
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        return any(_is_failure(e) for e in inner if isinstance(e, BaseException))
    return False

"""The process's one Optimizely client and dispatcher, built from settings on first use.

Usage::

    from optimizely_middleware.django import get_client, get_dispatcher

    def renew(subscription):                        # a task, a management command
        user = get_client().create_user_context(str(subscription.user_id))
        with get_dispatcher().request_scope():
            user.track_event("subscription_renewed")

The middleware, :func:`get_client`, :func:`get_dispatcher` and the ASGI
wrapper all share one :class:`DjangoOptimizely`, built once per process under
a lock. The package's exit handler closes its sender within
``SHUTDOWN_TIMEOUT`` seconds when the process exits normally (gunicorn,
uWSGI, management commands); under an ASGI server the wrapper from
:func:`~optimizely_middleware.django.asgi_application` does it at lifespan
shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from optimizely_middleware.client import create_client
from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.django.config import SETTING, OptimizelySettings, load_settings
from optimizely_middleware.errors import ConfigurationError
from optimizely_middleware.process import hooks
from optimizely_middleware.settings import build as configured

if TYPE_CHECKING:
    from optimizely.optimizely import Optimizely

__all__ = ["DjangoOptimizely", "get_client", "get_dispatcher", "get_state", "reset"]

logger = logging.getLogger("optimizely_middleware")


@dataclass(frozen=True)
class DjangoOptimizely:
    """What the Django integration runs on: the client, its dispatcher, the settings.

    Example::

        state = get_state()
        state.dispatcher.flush(2.0)
        print(state.settings.failed_requests, state.dispatcher.stats()["requests"])
    """

    client: Optimizely
    dispatcher: RequestScopedEventDispatcher
    settings: OptimizelySettings
    #: The process the client was built in (see :func:`get_state` on forks).
    pid: int = field(default_factory=os.getpid)


class _BuildLock:
    """The lock around building the state; a new one in a forked child (a parent
    thread may have held it at fork time)."""

    def __init__(self) -> None:
        self.after_fork_in_child()
        hooks.on_fork(self)

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


# Django has one settings module per process, so one state built from it.
_build = _BuildLock()
_state: DjangoOptimizely | None = None


def current_state() -> DjangoOptimizely | None:
    """The state if it is built already (no lock, no I/O), else None."""
    return _state


def get_state() -> DjangoOptimizely:
    """The process's state; built from ``settings.OPTIMIZELY`` on the first call.

    Raises :class:`~django.core.exceptions.ImproperlyConfigured` for a
    mistake in the settings (each call, until it is fixed).

    In a process forked after the state was built (gunicorn ``--preload``,
    uWSGI without ``lazy-apps``), a client with an ``SDK_KEY`` is built
    again on first use: the SDK's datafile polling thread does not survive
    the fork. The new client starts from the datafile the parent had (if
    it had fetched one already, no wait then). The dispatcher is kept (its sender
    starts over by itself after a fork).
    """
    global _state
    hooks.check_fork()  # uWSGI forks in C: the pid comparison renews the lock here
    state = _state
    if state is not None and (state.settings.sdk_key is None or state.pid == os.getpid()):
        return state
    with _build.lock:
        if _state is None:
            _state = build(load_settings())
        elif _state.settings.sdk_key is not None and _state.pid != os.getpid():
            _state = rebuilt_after_fork(_state)
        return _state


def get_client() -> Optimizely:
    """The Optimizely client that ``request.optimizely`` is, for code outside views."""
    return get_state().client


def get_dispatcher() -> RequestScopedEventDispatcher:
    """The dispatcher: ``flush(timeout)``, ``stats()``, ``request_scope()``."""
    return get_state().dispatcher


def build(config: OptimizelySettings) -> DjangoOptimizely:
    """A new client and dispatcher for ``config`` (the middleware uses :func:`get_state`)."""
    try:
        built = configured.build(config)
    except ConfigurationError as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    config_manager = getattr(built.client, "config_manager", None)
    if config.sdk_key is not None and config_manager is not None:
        # Wait for the first datafile (up to the SDK's blocking_timeout), as the
        # first decide would. A server that forks after this (gunicorn --preload,
        # uWSGI without lazy-apps) then gives every worker that datafile, instead
        # of forking while the first fetch, and the imports it makes, run on the
        # polling thread: a lock held there at the fork is never released in the
        # worker, whose own first fetch can then hang.
        config_manager.get_config()
    return DjangoOptimizely(client=built.client, dispatcher=built.dispatcher, settings=config)


def rebuilt_after_fork(state: DjangoOptimizely) -> DjangoOptimizely:
    """``state`` with a new client, whose datafile polling runs in this process."""
    config = state.settings
    datafile = config.datafile
    # Read without get_config(), which would wait for a fetch that, if the parent
    # forked before its first one completed, never comes in this process.
    current = getattr(state.client.config_manager, "optimizely_config", None)
    try:
        if current is not None:
            datafile = current.get_datafile()
    except Exception:
        logger.debug("Could not read the parent's datafile; the child fetches its own.")
    client = create_client(
        state.dispatcher, datafile, sdk_key=config.sdk_key, **config.client_options
    )
    logger.debug("Built the Optimizely client again after a fork, for its datafile polling.")
    return replace(state, client=client, pid=os.getpid())


def reset(timeout: float = 5.0) -> None:
    """Close the current dispatcher (delivering what it holds) and forget the state.

    The next request, or the next :func:`get_client`, builds a new one from
    the settings. Django's ``override_settings(OPTIMIZELY=...)`` calls it.
    """
    global _state
    with _build.lock:
        state, _state = _state, None
    if state is not None:
        state.dispatcher.close(timeout)
        client_close = getattr(state.client, "close", None)
        if callable(client_close):
            client_close()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        # Tests change settings often: do not wait long on an endpoint that is away.
        reset(timeout=1.0)


setting_changed.connect(_on_setting_changed, dispatch_uid="optimizely_middleware.django")

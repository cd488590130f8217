"""The dispatcher and the client that checked settings describe, built once per app.

Usage::

    from optimizely_middleware.settings.build import build
    from optimizely_middleware.settings.model import ENVIRONMENT, load_settings

    built = build(load_settings(None, ENVIRONMENT))   # OPTIMIZELY_* variables only
    built.client.create_user_context("user-1").decide("new_checkout")

Flask's, Starlette's and Django's integrations all build through here, so a
setting means the same thing in each, and a client the SDK cannot use is
an error at start-up, naming the setting it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from optimizely_middleware.client import create_client
from optimizely_middleware.delivery.sender import EventSender
from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.errors import ConfigurationError
from optimizely_middleware.settings.model import OptimizelySettings

if TYPE_CHECKING:
    from optimizely.optimizely import Optimizely

__all__ = ["Configured", "build", "build_client", "build_dispatcher"]


@dataclass(frozen=True)
class Configured:
    """A client wired to its dispatcher, and the settings they came from.

    Example::

        built = build(settings)
        built.dispatcher.flush(built.settings.shutdown_timeout)
    """

    client: Optimizely
    dispatcher: RequestScopedEventDispatcher
    settings: OptimizelySettings


def build_dispatcher(settings: OptimizelySettings) -> RequestScopedEventDispatcher:
    """A dispatcher (and its sender) for ``settings``."""
    return RequestScopedEventDispatcher(
        EventSender(endpoint=settings.event_endpoint, shutdown_timeout=settings.shutdown_timeout),
        failed_requests=settings.failed_requests,
        outside_scope=settings.outside_scope,
        max_events_per_request=settings.max_events_per_request,
    )


def build_client(
    settings: OptimizelySettings, dispatcher: RequestScopedEventDispatcher
) -> Optimizely:
    """A client for ``settings`` wired to ``dispatcher``.

    A ``CLIENT_OPTIONS`` keyword that ``create_client`` refuses, or a
    datafile the SDK rejects, raises :class:`ConfigurationError` naming the
    setting.
    """
    try:
        return create_client(
            dispatcher, settings.datafile, sdk_key=settings.sdk_key, **settings.client_options
        )
    except TypeError as exc:
        raise ConfigurationError(f"{settings.origin('CLIENT_OPTIONS')}: {exc}") from exc
    except ConfigurationError as exc:
        key = "DATAFILE_PATH" if "DATAFILE_PATH" in settings.origins else "DATAFILE"
        where = settings.origin(key)
        raise ConfigurationError(f"{where}: {exc}") from exc


def build(settings: OptimizelySettings) -> Configured:
    """The dispatcher and the client for ``settings``; the dispatcher is closed on an error."""
    dispatcher = build_dispatcher(settings)
    try:
        client = build_client(settings, dispatcher)
    except BaseException:
        dispatcher.close(0)
        raise
    return Configured(client=client, dispatcher=dispatcher, settings=settings)

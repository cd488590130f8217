"""Building an Optimizely client that keeps events on the request's thread.

Usage::

    from optimizely_middleware import RequestScopedEventDispatcher, create_client

    dispatcher = RequestScopedEventDispatcher()
    client = create_client(dispatcher, datafile="datafile.json")   # or sdk_key="..."
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from optimizely import optimizely
from optimizely.config_manager import PollingConfigManager
from optimizely.event.event_processor import BatchEventProcessor, ForwardingEventProcessor
from optimizely.helpers import validator
from optimizely.logger import adapt_logger
from optimizely.notification_center import NotificationCenter

from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
from optimizely_middleware.errors import ConfigurationError, WiringWarning
from optimizely_middleware.processor import RequestScopedEventProcessor
from optimizely_middleware.sdk_logging import SDKLogger
from optimizely_middleware.wiring_hints import BATCH_PROCESSOR_HINT

__all__ = ["check_client", "create_client", "datafile_text"]

Datafile = str | bytes | os.PathLike[str]


def create_client(
    dispatcher: RequestScopedEventDispatcher,
    datafile: Datafile | None = None,
    *,
    sdk_key: str | None = None,
    url_template: str | None = None,
    update_interval: float | None = None,
    blocking_timeout: int | None = None,
    **optimizely_kwargs: Any,
) -> optimizely.Optimizely:
    """Build an ``Optimizely`` client wired to ``dispatcher`` the right way.

    The client gets a :class:`~optimizely_middleware.processor.RequestScopedEventProcessor`
    that keeps the SDK's events in the current request's scope (one append,
    no payload built on the request's thread) and shares the client's
    notification centre, so ``LOG_EVENT`` listeners still fire (after the
    response). Unless you pass ``logger=``, the SDK logs through
    :class:`~optimizely_middleware.sdk_logging.SDKLogger`, which keeps
    visitor ids out of INFO and above. Every other keyword
    (``user_profile_service``, ``default_decide_options``, ...) goes to
    ``Optimizely`` unchanged.

    ``datafile`` is the datafile's JSON text, or the file to read it from (a
    ``pathlib.Path``, or a ``str`` that does not start with ``{``). A datafile
    that cannot be read or that the SDK rejects raises
    :class:`~optimizely_middleware.errors.ConfigurationError` here, instead of
    giving a client whose every ``decide`` returns nothing.

    With ``sdk_key`` the datafile is polled as the SDK does it by default;
    ``url_template`` (e.g. a datafile proxy), ``update_interval`` and
    ``blocking_timeout`` set up that polling (``datafile`` then serves until
    the first fetch).

    Example::

        client = create_client(dispatcher, sdk_key="YOUR_SDK_KEY")
        user = client.create_user_context("user-1", {"plan": "pro"})
        decision = user.decide("new_checkout")
    """
    if datafile is None and sdk_key is None:
        raise TypeError("create_client() needs a datafile or an sdk_key")
    text = None if datafile is None else datafile_text(datafile)
    for name in ("event_processor", "event_dispatcher", "event_processor_options"):
        if name in optimizely_kwargs:
            raise TypeError(
                f"create_client() sets {name} itself; pass the dispatcher as its first argument"
            )
    if optimizely_kwargs.get("logger") is None:
        optimizely_kwargs["logger"] = SDKLogger()
    sdk_logger = optimizely_kwargs["logger"]
    notification_center = optimizely_kwargs.pop("notification_center", None)
    if notification_center is None:
        notification_center = NotificationCenter(adapt_logger(sdk_logger))
    if sdk_key is not None and (url_template or update_interval or blocking_timeout):
        if "config_manager" in optimizely_kwargs:
            raise TypeError("pass either config_manager or the polling options, not both")
        optimizely_kwargs["config_manager"] = PollingConfigManager(
            sdk_key=sdk_key,
            datafile=text,
            url_template=url_template,
            update_interval=update_interval,
            blocking_timeout=blocking_timeout,
            logger=sdk_logger,
            error_handler=optimizely_kwargs.get("error_handler"),
            notification_center=notification_center,
            skip_json_validation=optimizely_kwargs.get("skip_json_validation", False),
        )
    check_static = sdk_key is None and "config_manager" not in optimizely_kwargs
    processor = RequestScopedEventProcessor(dispatcher, notification_center=notification_center)
    client = optimizely.Optimizely(
        datafile=text,
        sdk_key=sdk_key,
        event_dispatcher=dispatcher,
        event_processor=processor,
        notification_center=notification_center,
        **optimizely_kwargs,
    )
    if check_static and text is not None and client.config_manager.get_config() is None:
        raise ConfigurationError(
            f"The Optimizely SDK rejected the datafile{_described(datafile)}: "
            f"{_rejection_reason(text)}. Use the datafile JSON of your project's "
            "environment (Optimizely: Settings > Environments), or pass sdk_key=."
        )
    return client


def datafile_text(datafile: Datafile) -> str:
    """The JSON text of ``datafile``: the text itself, or what the file it names holds.

    A ``str`` that starts with ``{`` (after blanks) is JSON text; any other
    ``str``, and any ``os.PathLike``, names a file.

    Example::

        datafile_text(Path("datafile.json"))   # the file's text
        datafile_text('{"version": "4"}')      # unchanged
    """
    if isinstance(datafile, bytes):
        datafile = datafile.decode("utf-8")
    if isinstance(datafile, str):
        if datafile.lstrip().startswith("{"):
            return datafile
        if not datafile.strip():
            raise ConfigurationError(
                "create_client(datafile='') got an empty datafile: pass the datafile's "
                "JSON text, its path, or sdk_key=."
            )
    elif not isinstance(datafile, os.PathLike):
        raise TypeError(
            "create_client(datafile=...) takes JSON text, a path (str or pathlib.Path), "
            f"not {type(datafile).__name__}"
        )
    path = Path(datafile)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"create_client(datafile={str(path)!r}): it is not JSON text, so it names a "
            f"file, and that file cannot be read: {reason} (relative paths start from "
            f"{os.getcwd()!r})."
        ) from exc


def _described(datafile: Datafile | None) -> str:
    if isinstance(datafile, os.PathLike) or (
        isinstance(datafile, str) and not datafile.lstrip().startswith("{")
    ):
        return f" in {str(datafile)!r}"
    return ""


def _rejection_reason(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as exc:
        return f"it is not valid JSON ({exc})"
    if not validator.is_datafile_valid(text):
        return "it is JSON, but not an Optimizely datafile (the SDK's schema check failed)"
    return "the SDK could not read it (the optimizely_middleware.sdk logger says why)"


def check_client(client: optimizely.Optimizely, dispatcher: RequestScopedEventDispatcher) -> bool:
    """Warn (:class:`WiringWarning`) if ``client`` would bypass request scopes.

    Returns True when the client keeps its events in ``dispatcher``'s request
    scopes: through a :class:`RequestScopedEventProcessor` (what
    :func:`create_client` wires) or a ``ForwardingEventProcessor`` (which
    calls ``dispatcher.dispatch_event`` on the calling thread). Middleware
    and extensions call this when given a client.
    """
    processor = getattr(client, "event_processor", None)
    if isinstance(processor, BatchEventProcessor):
        message = BATCH_PROCESSOR_HINT
    elif not isinstance(processor, (RequestScopedEventProcessor, ForwardingEventProcessor)):
        message = (
            f"The Optimizely client uses {type(processor).__name__} as its event "
            "processor; request scoping needs a RequestScopedEventProcessor or a "
            "ForwardingEventProcessor. " + BATCH_PROCESSOR_HINT
        )
    elif processor.event_dispatcher is not dispatcher:
        message = (
            "The Optimizely client forwards its events to a different dispatcher than "
            "the one given to the middleware, so they are not held per request."
        )
    elif processor.notification_center is not client.notification_center:
        message = (
            f"The client's {type(processor).__name__} has another notification centre, so "
            "the client's LOG_EVENT listeners never fire. Pass the same "
            "notification_center to both, or use create_client()."
        )
    else:
        return True
    warnings.warn(message, WiringWarning, stacklevel=2)
    return False

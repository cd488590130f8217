"""The logger :func:`~optimizely_middleware.create_client` gives the Optimizely SDK.

Usage::

    import logging

    # The SDK's lines, visitor ids included, at DEBUG on this logger:
    logging.getLogger("optimizely_middleware.sdk").setLevel(logging.DEBUG)

The SDK logs visitor ids at INFO (``Tracking event "purchase" for user
"user-1".``) and DEBUG, and its default ``NoOpLogger`` still propagates to
the root logger, so an app that logs at INFO would write them out. Pass
``create_client(..., logger=my_logger)`` to keep the SDK's own behaviour.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from optimizely.logger import BaseLogger

__all__ = ["SDK_LOGGER_NAME", "SDKLogger"]

SDK_LOGGER_NAME = "optimizely_middleware.sdk"

# A quoted user id in an SDK line ('... for user "user-1".'); and the SDK's
# line that prints a whole LogEvent (visitor ids, attributes, tags).
_QUOTED_USER = re.compile(r'(\buser\s+)"[^"]*"', re.IGNORECASE)
_PAYLOAD_LINE = "Error dispatching event:"


class SDKLogger(BaseLogger):
    """The logger :func:`create_client` gives the SDK unless you pass ``logger=``.

    The SDK logs visitor ids, attributes and event payloads at INFO and
    DEBUG. Its lines go to the ``optimizely_middleware.sdk`` logger: INFO
    lines are logged at DEBUG there (so an app logging at INFO gets none of
    them), and WARNING and ERROR lines keep their level with quoted user
    ids and payloads replaced by ``<redacted>`` (the full line is logged
    at DEBUG too). A line costs nothing unless its level is enabled.

    Example::

        logging.getLogger("optimizely_middleware.sdk").setLevel(logging.DEBUG)  # see them all
        client = create_client(dispatcher, datafile=datafile_json)
    """

    def __init__(self, target: logging.Logger | None = None) -> None:
        self.target = target or logging.getLogger(SDK_LOGGER_NAME)

    def log(self, level: int, message: object, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if level < logging.WARNING:
            self.debug(message, *args, **kwargs)
            return
        target = self.target
        if not target.isEnabledFor(level):
            return
        text = str(message) % args if args else str(message)
        if text.startswith(_PAYLOAD_LINE):
            redacted = _PAYLOAD_LINE + " <redacted>"
        else:
            redacted = _QUOTED_USER.sub(r'\1"<redacted>"', text)
        if redacted != text:
            # The traceback may carry the same data: it goes with the full line only.
            if target.isEnabledFor(logging.DEBUG):
                target.debug("%s", text, **kwargs)
            kwargs.pop("exc_info", None)
        target.log(level, "%s", redacted, **kwargs)

    # The SDK calls these about 17 times a page: one call and one level check,
    # as cheap as the SDK's NoOpLogger allows (log() would add a frame).
    def debug(self, message: object, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        target = self.target
        if target.isEnabledFor(logging.DEBUG):
            target.log(logging.DEBUG, message, *args, **kwargs)

    info = debug  # type: ignore[assignment]  # INFO lines are logged at DEBUG

    def warning(self, message: object, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.log(logging.WARNING, message, *args, **kwargs)

    def error(self, message: object, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.log(logging.ERROR, message, *args, **kwargs)

    def critical(self, message: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.CRITICAL, message, *args, **kwargs)

    def exception(self, message: object, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("exc_info", True)
        self.log(logging.ERROR, message, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        return self.target.isEnabledFor(logging.DEBUG if level < logging.WARNING else level)

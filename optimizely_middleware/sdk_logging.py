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

from optimizely.helpers.enums import Errors
from optimizely.logger import BaseLogger

__all__ = ["SDK_LOGGER_NAME", "SDK_TEMPLATES", "SDKLogger", "SDKTemplate", "redact_sdk_line"]

SDK_LOGGER_NAME = "optimizely_middleware.sdk"

REDACTED = "<redacted>"


class SDKTemplate:
    """One of the SDK's WARNING or ERROR lines that carries a visitor's data.

    The SDK formats the data into the line, so the line is ``prefix``, the
    data, then ``suffix``, both the SDK's own text: everything between them
    is the data, whatever characters it holds (quotes, backslashes,
    newlines, or the suffix itself).

    Example::

        template = SDKTemplate('Unable to save user profile for user "{}".')
        assert template.redact('Unable to save user profile for user "a"b".') == (
            'Unable to save user profile for user "<redacted>".'
        )
    """

    __slots__ = ("prefix", "suffix")

    def __init__(self, template: str) -> None:
        self.prefix, placeholder, self.suffix = template.partition("{}")
        if not placeholder:
            raise ValueError(f"an SDK template needs one {{}}: {template!r}")

    def redact(self, text: str) -> str | None:
        """``text`` with the data replaced by ``<redacted>``; None if it is another line."""
        prefix, suffix = self.prefix, self.suffix
        if (
            len(text) >= len(prefix) + len(suffix)
            and text.startswith(prefix)
            and text.endswith(suffix)
        ):
            return prefix + REDACTED + suffix
        return None


# The SDK's (5.x) WARNING and ERROR lines that carry a visitor id or a payload.
# Where the SDK adds an exception's text after the id (a user profile service's,
# which may repeat the id), the suffix is the line's end and that text goes too.
SDK_TEMPLATES: tuple[SDKTemplate, ...] = tuple(
    SDKTemplate(template)
    for template in (
        'Unable to retrieve user profile for user "{}" as lookup failed.',
        'Unable to save user profile for user "{}".',
        'Failed to save user profile of user "{}".',  # ... "{id}" for exception:{exc}".
        "Error dispatching event: {}",  # the whole LogEvent, then the error
        Errors.ODP_EVENT_FAILED,  # "ODP event send failed ({})." with a batch of identifiers
    )
)

# A line of another SDK version that names a user: everything from the first
# quote after "user" to the line's last quote goes (more than the id, never less).
_QUOTED_USER = re.compile(r'(\buser\s+)".*"', re.IGNORECASE | re.DOTALL)


def redact_sdk_line(text: str) -> str:
    """``text`` without the visitor data the SDK put in it (see :data:`SDK_TEMPLATES`).

    Example::

        redact_sdk_line('Unable to save user profile for user "a"b".')
        # 'Unable to save user profile for user "<redacted>".'
    """
    for template in SDK_TEMPLATES:
        redacted = template.redact(text)
        if redacted is not None:
            return redacted
    return _QUOTED_USER.sub(rf'\1"{REDACTED}"', text)


class SDKLogger(BaseLogger):
    """The logger :func:`create_client` gives the SDK unless you pass ``logger=``.

    The SDK logs visitor ids, attributes and event payloads at INFO and
    DEBUG. Its lines go to the ``optimizely_middleware.sdk`` logger: INFO
    lines are logged at DEBUG there (so an app logging at INFO gets none of
    them), and WARNING and ERROR lines keep their level with visitor ids
    and payloads replaced by ``<redacted>``, whatever characters an id
    holds (the full line is logged at DEBUG too). A line costs nothing unless its level is enabled.

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
        redacted = redact_sdk_line(text)
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

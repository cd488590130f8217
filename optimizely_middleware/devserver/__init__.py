"""The local Optimizely event endpoint for development, and its inspector page.

Run it::

    python -m optimizely_middleware.devserver            # or: optimizely-devserver

or embed it (tests, demos)::

    from optimizely_middleware.devserver import DevServer

    with DevServer(port=0, output=None) as server:
        sender = EventSender(endpoint=server.url)
        ...
        server.wait_for_visitors(3)

The parts, each importing only those below it: :mod:`.cli` (the command) runs
:mod:`.server` (the HTTP server and what it keeps), which answers through
:mod:`.handler` (one request), which serves the page and API of
:mod:`.inspector`; :mod:`.recent_posts` bounds what is kept, and
:mod:`.received` is one POST as it arrived and how the terminal shows it.
The handler and the inspector see the server through the narrow protocols
:class:`~.handler.HandledServer` and :class:`~.inspector.InspectedServer`.
"""

from __future__ import annotations

from optimizely_middleware.devserver.cli import main
from optimizely_middleware.devserver.received import (
    OutputFormat,
    ReceivedPost,
    describe_conversion,
    describe_decision,
    format_post,
    format_summary,
)
from optimizely_middleware.devserver.server import DevServer

__all__ = [
    "DevServer",
    "OutputFormat",
    "ReceivedPost",
    "describe_conversion",
    "describe_decision",
    "format_post",
    "format_summary",
    "main",
]

"""The ``optimizely-devserver`` command (``python -m optimizely_middleware.devserver``).

Usage::

    optimizely-devserver                       # http://127.0.0.1:8765/ is the inspector
    optimizely-devserver --status 503 --delay 0.5 --quiet

See :mod:`optimizely_middleware.devserver` for what the server does.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus

from optimizely_middleware.devserver import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOCAL_HOSTS,
    DevServer,
    OutputFormat,
)
from optimizely_middleware.received import status_text

__all__ = ["run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimizely-devserver",
        description=(
            "A local Optimizely event endpoint: accepts the SDK's event POSTs, answers "
            "204, prints each one readably and shows them live on an inspector page at /."
        ),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default %(default)s; payloads carry user ids, "
        "so think twice before listening on other interfaces)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 picks one)"
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds to wait before answering each POST, to simulate a slow endpoint",
    )
    parser.add_argument(
        "--status",
        type=int,
        default=int(HTTPStatus.NO_CONTENT),
        help="status to answer with (default %(default)s; e.g. 503 or 429 to simulate failures)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--quiet", action="store_true", help="one summary line per POST, no user data"
    )
    output.add_argument("--json", action="store_true", help="one JSON line per POST")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Run the devserver until Ctrl+C (the ``optimizely-devserver`` command)."""
    args = _parser().parse_args(argv)
    output_format: OutputFormat = "json" if args.json else "quiet" if args.quiet else "text"
    try:
        server = DevServer(
            args.host,
            args.port,
            status=args.status,
            delay=args.delay,
            output=sys.stdout,
            output_format=output_format,
        )
    except ValueError as exc:
        print(f"optimizely-devserver: {exc}", file=sys.stderr)
        return 2
    notes = sys.stderr
    # Before anything is printed: whoever reads "Send events to" may stop us at once.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            server.bind()
        except OSError as exc:
            print(
                f"optimizely-devserver: cannot listen on {args.host}:{args.port}: {exc}",
                file=notes,
            )
            return 1
        if server.host in LOCAL_HOSTS:
            print(f"Listening on {server.host} only (event payloads carry user ids).", file=notes)
        else:
            print(
                f"WARNING: listening on {server.host}: event payloads carry user ids and "
                "attributes, and anyone who can reach this address can send them here. "
                "The inspector still answers this machine only.",
                file=notes,
            )
        print(f"Inspector: {server.inspector_url} (what arrived, live)", file=notes)
        delay = f" after {server.delay:g}s" if server.delay else ""
        print(
            f"Send events to {server.url} (answering {status_text(server.status)}{delay}). "
            "Ctrl+C to stop.",
            file=notes,
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
        posts = server.posts
        visitors = sum(len(p.visitors) for p in posts)
        print(f"\nStopped after {len(posts)} POST(s) with {visitors} visitor(s).", file=notes)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    # Stop on SIGTERM the way Ctrl+C does, so the summary line is printed.
    raise KeyboardInterrupt

"""The ``optimizely-devserver`` command (``python -m optimizely_middleware.devserver``).

Usage::

    optimizely-devserver                       # http://127.0.0.1:8765/ is the inspector
    optimizely-devserver --status 503 --delay 0.5 --quiet
    optimizely-devserver --max-posts 5000 --max-bytes 256MiB
    optimizely-devserver --version

See :mod:`optimizely_middleware.devserver` for what the server does.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from optimizely_middleware import __version__
from optimizely_middleware.devserver.received import OutputFormat, format_bytes, status_text
from optimizely_middleware.devserver.recent_posts import DEFAULT_MAX_BYTES, DEFAULT_MAX_POSTS
from optimizely_middleware.devserver.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOCAL_HOSTS,
    DevServer,
)

__all__ = ["main", "parse_size", "run"]

_SIZE = re.compile(r"(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from ``"33554432"``, ``"512k"``, ``"32MiB"`` or ``"1G"`` (binary units).

    Example::

        assert parse_size("32MiB") == 32 * 1024 * 1024
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: a number of bytes, or with k, M or G (e.g. 64MiB)"
        )
    number, unit = match.groups()
    return int(number) * _UNITS[unit[:1].lower()]


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
    parser.add_argument(
        "--max-posts",
        type=int,
        default=DEFAULT_MAX_POSTS,
        metavar="N",
        help="POSTs kept in memory for the inspector (default %(default)s); older ones are "
        "let go, and counted",
    )
    parser.add_argument(
        "--max-bytes",
        type=parse_size,
        default=DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help=f"bytes of POST bodies kept in memory, e.g. 64MiB (default "
        f"{format_bytes(DEFAULT_MAX_BYTES)}; a kept body takes up to about four times its size)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
            max_posts=args.max_posts,
            max_bytes=args.max_bytes,
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
        print("\n" + stop_summary(server.counts()), file=notes)
    return 0


def stop_summary(counts: dict[str, Any]) -> str:
    """The last line: what arrived, counted as the inspector counts it.

    Events are impressions plus conversions of accepted POSTs; visitors are
    distinct visitor ids.
    """
    events = sum(i["count"] for i in counts["impressions"]) + sum(
        c["count"] for c in counts["conversions"]
    )
    line = (
        f"Stopped after {counts['posts']} POST(s): {events} event(s) "
        f"from {counts['visitors']} visitor(s)"
    )
    if counts["rejected_posts"]:
        line += f"; {counts['rejected_posts']} POST(s) answered with an error"
    if counts["refused_posts"]:
        line += f"; {counts['refused_posts']} browser POST(s) refused"
    if counts["let_go"]:
        line += (
            f"; {counts['let_go']} older POST(s) were let go from memory "
            f"(keeping {counts['max_posts']} within {format_bytes(counts['max_bytes'])})"
        )
    return line + "."


def _interrupt(signum: int, frame: object) -> None:
    # Stop on SIGTERM the way Ctrl+C does, so the summary line is printed.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the devserver until Ctrl+C (the ``optimizely-devserver`` command)."""
    return run(argv)

"""The one rule for "did this request fail?", as a table."""

from __future__ import annotations

import asyncio
import sys

import pytest
import trio
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

from optimizely_middleware.scope import request_failed


def trio_cancelled() -> BaseException:
    """A real ``trio.Cancelled`` (it has no public constructor)."""
    caught: list[BaseException] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                caught.append(exc)
                raise

    trio.run(main)
    return caught[0]


CASES: list[tuple[str, dict[str, object], bool]] = [
    # -- status
    ("nothing happened", {}, False),
    ("200", {"status": 200}, False),
    ("404", {"status": 404}, False),
    ("499", {"status": 499}, False),
    ("500", {"status": 500}, True),
    ("503", {"status": 503}, True),
    # -- an exception from the app
    ("exception, no response", {"exc": ValueError("bug")}, True),
    ("exception after a 200 start", {"status": 200, "exc": RuntimeError("mid-body")}, True),
    ("exception with a 404 start", {"status": 404, "exc": KeyError("x")}, True),
    ("OSError from the app itself", {"exc": ConnectionRefusedError("database")}, True),
    # -- a disconnect, on send or on receive
    ("send raised OSError", {"status": 200, "exc": OSError("gone"), "disconnected": True}, False),
    (
        "send raised ClientDisconnect",
        {"status": 200, "exc": ClientDisconnect(), "disconnected": True},
        False,
    ),
    (
        "error raised after http.disconnect on receive",
        {"status": 200, "exc": RuntimeError("stream stopped"), "disconnected": True},
        False,
    ),
    ("disconnect, app returned", {"status": 200, "disconnected": True}, False),
    ("disconnect before any response", {"disconnected": True}, False),
    (
        "WebSocketDisconnect after websocket.disconnect",
        {"exc": WebSocketDisconnect(1001), "disconnected": True},
        False,
    ),
    ("5xx, then the client went away", {"status": 502, "disconnected": True}, True),
    (
        "5xx, then an error after the disconnect",
        {"status": 500, "exc": OSError("gone"), "disconnected": True},
        True,
    ),
    # -- cancellation and process exit
    ("asyncio.CancelledError", {"exc": asyncio.CancelledError()}, False),
    ("cancelled after a 200 start", {"status": 200, "exc": asyncio.CancelledError()}, False),
    ("trio.Cancelled", {"exc": trio_cancelled()}, False),
    ("GeneratorExit", {"exc": GeneratorExit()}, False),
    ("KeyboardInterrupt", {"exc": KeyboardInterrupt()}, False),
    ("SystemExit", {"exc": SystemExit(1)}, False),
    ("cancelled after a 5xx start", {"status": 500, "exc": asyncio.CancelledError()}, True),
]

if sys.version_info >= (3, 11):  # exception groups
    from builtins import BaseExceptionGroup, ExceptionGroup

    CASES += [
        ("ExceptionGroup", {"exc": ExceptionGroup("tasks", [ValueError("a")])}, True),
        (
            "BaseExceptionGroup of cancellations",
            {"exc": BaseExceptionGroup("tasks", [asyncio.CancelledError(), KeyboardInterrupt()])},
            False,
        ),
        (
            "BaseExceptionGroup with an error in it",
            {"exc": BaseExceptionGroup("tasks", [asyncio.CancelledError(), ValueError("bug")])},
            True,
        ),
        (
            "nested group with an error deep inside",
            {
                "exc": BaseExceptionGroup(
                    "outer",
                    [GeneratorExit(), BaseExceptionGroup("inner", [SystemExit(), OSError()])],
                )
            },
            True,
        ),
    ]


@pytest.mark.parametrize(
    ("outcome", "failed"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_request_failed(outcome: dict[str, object], failed: bool) -> None:
    assert request_failed(**outcome) is failed  # type: ignore[arg-type]


def test_the_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        request_failed(500)  # type: ignore[misc]

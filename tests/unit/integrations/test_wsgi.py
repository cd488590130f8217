"""OptimizelyWSGIMiddleware driven the way a WSGI server drives it, with the real SDK."""

from __future__ import annotations

import asyncio
import gc
import io
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper
from optimizely.optimizely import Optimizely
from werkzeug.test import EnvironBuilder
from werkzeug.wsgi import FileWrapper as WerkzeugFileWrapper

from optimizely_middleware import (
    OptimizelyWSGIMiddleware,
    RequestScopedEventDispatcher,
    WiringWarning,
    create_client,
)
from optimizely_middleware.dispatcher import add_request_end_listener, remove_request_end_listener
from optimizely_middleware.integrations.wsgi import (
    ENVIRON_KEY,
    ScopedAsyncIterator,
    ScopedIterator,
    ScopedRequest,
)
from tests.support.fakes import RecordingSink, visitor_id_of

DATAFILE_PATH = Path(__file__).parents[2] / "data" / "datafile.json"

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Setup:
    def __init__(self, datafile: str, failed_requests: str = "keep") -> None:
        self.sink = RecordingSink()
        self.dispatcher = RequestScopedEventDispatcher(
            self.sink,
            failed_requests=failed_requests,  # type: ignore[arg-type]
            outside_scope="drop",
        )
        self.client: Optimizely = create_client(self.dispatcher, datafile=datafile)

    def decide(self, user_id: str) -> None:
        self.client.create_user_context(user_id).decide("new_checkout")

    def users(self, batch: int) -> list[str]:
        return [visitor_id_of(e) for e in self.sink.batches[batch]]

    def path_app(self) -> App:
        """An app that decides for the user its path names and writes ``b"done"``."""

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
            start_response("200 OK", [])
            self.decide(environ["PATH_INFO"].strip("/"))
            yield b"done"

        return app


@pytest.fixture
def setup(datafile: str) -> Setup:
    return Setup(datafile)


@pytest.fixture
def discarding(datafile: str) -> Setup:
    return Setup(datafile, failed_requests="discard")


class Server:
    """Calls a WSGI app the way gunicorn's sync/gthread workers do."""

    def __init__(self, environ: dict[str, Any] | None = None, path: str = "/") -> None:
        self.environ = environ if environ is not None else EnvironBuilder(path).get_environ()
        self.status: str | None = None
        self.exc_info: Any = None

    def start_response(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        self.status = status
        self.exc_info = exc_info
        return lambda data: None

    def call(self, app: App) -> Iterable[bytes]:
        return app(self.environ, self.start_response)

    def serve(self, app: App) -> None:
        """One whole request: the body written to the end, then closed."""
        body = self.call(app)
        list(body)
        body.close()  # type: ignore[attr-defined]


HandOffs = Callable[[RequestScopedEventDispatcher], list[tuple[int, bool]]]


@pytest.fixture
def hand_offs() -> Iterator[HandOffs]:
    """``hand_offs(dispatcher)``: a list of (event count, failed), one per request
    of ``dispatcher`` that ends from then on until the end of the test."""
    listeners: list[Any] = []

    def record(dispatcher: RequestScopedEventDispatcher) -> list[tuple[int, bool]]:
        seen: list[tuple[int, bool]] = []

        def listener(d: RequestScopedEventDispatcher, events: list[Any], failed: bool) -> None:
            if d is dispatcher:
                seen.append((len(events), failed))

        add_request_end_listener(listener)
        listeners.append(listener)
        return seen

    yield record
    for listener in listeners:
        remove_request_end_listener(listener)


def test_events_are_handed_over_once_the_body_is_written(setup: Setup) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"hel"
            yield b"lo"

        def close(self) -> None:
            setup.decide("closing")  # app code in close() belongs to the request too
            closed.append(True)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        setup.decide("alice")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    body = iter(Server().call(OptimizelyWSGIMiddleware(app, setup.dispatcher)))
    assert next(body) == b"hel"
    assert next(body) == b"lo"
    assert setup.sink.batches == []  # the last chunk is being written
    with pytest.raises(StopIteration):
        next(body)
    assert closed == [True]
    assert setup.users(0) == ["alice", "closing"]
    body.close()  # type: ignore[attr-defined]  # the server's close() after that is a no-op
    assert closed == [True]
    assert len(setup.sink.batches) == 1


def test_a_body_the_server_stops_reading_is_handed_over_on_close(setup: Setup) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        setup.decide("alice")
        start_response("200 OK", [])
        yield b"one"
        yield b"two"

    body = Server().call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    assert next(iter(body)) == b"one"
    assert setup.sink.batches == []
    body.close()  # type: ignore[attr-defined]  # e.g. the client went away
    assert setup.users(0) == ["alice"]
    assert setup.dispatcher.stats()["failed_requests"] == 0


def test_events_fired_while_the_body_is_iterated_belong_to_the_request(setup: Setup) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        setup.decide("before-start")
        start_response("200 OK", [])
        yield b"one"
        setup.decide("mid-stream")
        yield b"two"
        try:
            yield b"three"
        finally:
            setup.decide("in-close")

    server = Server()
    body = server.call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    iterator = iter(body)
    assert next(iterator) == b"one"
    assert next(iterator) == b"two"
    assert next(iterator) == b"three"
    # The server stops early (client went away) and closes: GeneratorExit runs app code.
    body.close()  # type: ignore[attr-defined]
    assert setup.users(0) == ["before-start", "mid-stream", "in-close"]
    assert setup.dispatcher.stats()["failed_requests"] == 0


def test_the_scope_is_active_only_while_app_code_runs(setup: Setup) -> None:
    seen: list[object] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        seen.append(setup.dispatcher.current_scope())
        start_response("200 OK", [])
        yield b"chunk"
        seen.append(setup.dispatcher.current_scope())

    server = Server()
    body = server.call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    assert setup.dispatcher.current_scope() is None
    for _ in body:
        assert setup.dispatcher.current_scope() is None
    body.close()  # type: ignore[attr-defined]
    assert setup.dispatcher.current_scope() is None
    assert seen[0] is not None and seen[0] is seen[1]
    # An event on this thread now is outside any request.
    setup.decide("after")
    assert setup.dispatcher.stats()["dropped"] == {"outside_scope": 1}
    assert setup.sink.batches == []


def test_an_exception_before_returning_propagates_and_hands_over(
    setup: Setup, hand_offs: HandOffs
) -> None:
    error = RuntimeError("boom")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        setup.decide("alice")
        raise error

    ends = hand_offs(setup.dispatcher)
    with pytest.raises(RuntimeError) as raised:
        Server().call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    assert raised.value is error
    assert ends == [(1, True)]
    assert setup.users(0) == ["alice"]  # failed_requests="keep"
    assert setup.dispatcher.current_scope() is None


def test_an_exception_while_iterating_propagates_and_hands_over(
    setup: Setup, hand_offs: HandOffs
) -> None:
    error = ValueError("body failed")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"one"
        setup.decide("alice")
        raise error

    ends = hand_offs(setup.dispatcher)
    body = Server().call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    with pytest.raises(ValueError) as raised:
        list(body)
    assert raised.value is error
    assert ends == []  # the server has not closed the body yet
    body.close()  # type: ignore[attr-defined]
    assert ends == [(1, True)]
    assert setup.dispatcher.stats()["failed_requests"] == 1


def test_failed_requests_are_discarded_with_the_discard_policy(discarding: Setup) -> None:
    def raising(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        discarding.decide("raised")
        raise RuntimeError("boom")
        yield b""

    def unavailable(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        discarding.decide("status-503")
        start_response("503 Service Unavailable", [])
        return [b"try later"]

    def ok(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        discarding.decide("status-200")
        start_response("200 OK", [])
        return [b"fine"]

    for app in (raising, unavailable, ok):
        body = Server().call(OptimizelyWSGIMiddleware(app, discarding.dispatcher))
        try:
            list(body)
        except RuntimeError:
            pass
        finally:
            body.close()  # type: ignore[attr-defined]
    assert discarding.users(0) == ["status-200"]
    stats = discarding.dispatcher.stats()
    assert stats["failed_requests"] == 2
    assert stats["dropped"] == {"failed_request": 2}


def test_a_5xx_status_or_exc_info_in_start_response_marks_the_request_failed(
    setup: Setup, hand_offs: HandOffs
) -> None:
    def lazy_500(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        # start_response called on the first next(), as generator apps do
        setup.decide("lazy")
        start_response("500 Internal Server Error", [])
        yield b"oops"

    def with_exc_info(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        setup.decide("exc-info")
        try:
            raise KeyError("x")
        except KeyError:
            import sys

            start_response("200 OK", [], sys.exc_info())
        return [b"recovered"]

    ends = hand_offs(setup.dispatcher)
    for app in (lazy_500, with_exc_info):
        server = Server()
        server.serve(OptimizelyWSGIMiddleware(app, setup.dispatcher))
        assert server.status is not None
    assert ends == [(1, True), (1, True)]


def test_the_servers_file_wrapper_reaches_the_server_unchanged(setup: Setup) -> None:
    environ = EnvironBuilder("/").get_environ()
    environ["wsgi.file_wrapper"] = GunicornFileWrapper
    opened: list[io.BufferedReader] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        setup.decide("file")
        start_response("200 OK", [])
        f = DATAFILE_PATH.open("rb")
        opened.append(f)
        return environ["wsgi.file_wrapper"](f)  # type: ignore[no-any-return]

    body = Server(environ).call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    # What gunicorn checks before it uses sendfile():
    assert isinstance(body, environ["wsgi.file_wrapper"])
    assert body.filelike is opened[0]  # type: ignore[attr-defined]
    assert setup.sink.batches == []
    body.close()  # type: ignore[attr-defined]
    assert opened[0].closed
    assert setup.users(0) == ["file"]


def test_a_file_wrapper_that_cannot_be_hooked_is_wrapped_instead(setup: Setup) -> None:
    class SlottedWrapper:
        __slots__ = ("file",)

        def __init__(self, file: Any) -> None:
            self.file = file

        def __iter__(self) -> Iterator[bytes]:
            return iter(lambda: self.file.read(1024), b"")

        def close(self) -> None:
            self.file.close()

    environ = EnvironBuilder("/").get_environ()
    environ["wsgi.file_wrapper"] = SlottedWrapper
    f = DATAFILE_PATH.open("rb")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        setup.decide("slotted")
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](f)  # type: ignore[no-any-return]

    body = Server(environ).call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    assert not isinstance(body, SlottedWrapper)
    assert b"".join(body) == DATAFILE_PATH.read_bytes()
    body.close()  # type: ignore[attr-defined]
    assert f.closed
    assert setup.users(0) == ["slotted"]


def test_a_file_wrapper_of_another_class_is_iterated_in_scope(setup: Setup) -> None:
    # werkzeug's dev server has no wsgi.file_wrapper; send_file then uses werkzeug's own.
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        setup.decide("werkzeug-file")
        start_response("200 OK", [])
        return WerkzeugFileWrapper(DATAFILE_PATH.open("rb"))

    body = Server().call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    assert b"".join(body) == DATAFILE_PATH.read_bytes()
    body.close()  # type: ignore[attr-defined]
    assert setup.users(0) == ["werkzeug-file"]


def test_a_body_the_server_never_closes_is_handed_over_when_released(setup: Setup) -> None:
    middleware = OptimizelyWSGIMiddleware(setup.path_app(), setup.dispatcher)
    body = Server(path="/first").call(middleware)
    assert next(iter(body)) == b"done"  # e.g. it stops once Content-Length bytes are out
    assert setup.sink.batches == []
    del body  # a server that forgets close() drops its reference after writing
    gc.collect()  # only needed off CPython; harmless here
    assert setup.users(0) == ["first"]

    # The next request on the same thread is a request of its own.
    Server(path="/second").serve(middleware)
    assert setup.users(1) == ["second"]
    assert setup.dispatcher.stats()["open_scopes"] == 0


def test_a_hooked_file_wrapper_never_closed_is_handed_over_when_released(setup: Setup) -> None:
    environ = EnvironBuilder("/").get_environ()
    environ["wsgi.file_wrapper"] = GunicornFileWrapper

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        setup.decide("file")
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"data"))  # type: ignore[no-any-return]

    body = Server(environ).call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    assert isinstance(body, GunicornFileWrapper)
    del body
    gc.collect()
    assert setup.users(0) == ["file"]


def test_wrapping_twice_hands_each_event_over_once(setup: Setup) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        setup.decide("call")
        start_response("200 OK", [])
        yield b"one"
        setup.decide("stream")
        yield b"two"

    inner = OptimizelyWSGIMiddleware(app, setup.dispatcher)
    outer = OptimizelyWSGIMiddleware(inner, setup.dispatcher)
    body = Server().call(outer)
    assert list(body) == [b"one", b"two"]
    body.close()  # type: ignore[attr-defined]
    assert [len(b) for b in setup.sink.batches] == [2]
    assert setup.dispatcher.stats()["requests"] == 1


def test_an_exception_in_close_propagates_and_hands_over(setup: Setup, hand_offs: HandOffs) -> None:
    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            setup.decide("closing")
            raise OSError("close failed")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Body()

    ends = hand_offs(setup.dispatcher)
    body = Server().call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    with pytest.raises(OSError, match="close failed"):
        list(body)  # the app's close() runs once the body is exhausted
    assert ends == [(1, True)]
    body.close()  # type: ignore[attr-defined]
    assert ends == [(1, True)]

    # Closed before the last chunk: the client went away, so what close() raises
    # is not a failure of the request (the rule of outcome.request_failed).
    stopped = Server().call(OptimizelyWSGIMiddleware(app, setup.dispatcher))
    with pytest.raises(OSError, match="close failed"):
        stopped.close()  # type: ignore[attr-defined]
    assert ends == [(1, True), (1, False)]


def test_concurrent_requests_on_threads_keep_their_events_apart(setup: Setup) -> None:
    barrier = threading.Barrier(8)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        user = environ["PATH_INFO"].strip("/")
        setup.decide(user)
        barrier.wait(timeout=30)  # every request is in flight at once
        start_response("200 OK", [])
        yield b"x"
        setup.decide(user)

    middleware = OptimizelyWSGIMiddleware(app, setup.dispatcher)

    def serve(n: int) -> None:
        Server(path=f"/user-{n}").serve(middleware)

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a request never finished"
    assert len(setup.sink.batches) == 8
    for batch in range(8):
        users = setup.users(batch)
        assert len(users) == 2 and users[0] == users[1]
    assert sorted(setup.users(b)[0] for b in range(8)) == sorted(f"user-{n}" for n in range(8))


def test_the_client_is_put_in_the_environ_and_checked(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = create_client(dispatcher, datafile=datafile)
    seen: list[object] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ[ENVIRON_KEY])
        start_response("204 No Content", [])
        return []

    body = Server().call(OptimizelyWSGIMiddleware(app, dispatcher, client=client))
    body.close()  # type: ignore[attr-defined]
    assert seen == [client]

    badly_wired = Optimizely(datafile, event_dispatcher=dispatcher)
    try:
        with pytest.warns(WiringWarning):
            OptimizelyWSGIMiddleware(app, dispatcher, client=badly_wired)
    finally:
        badly_wired.close()


def test_it_needs_a_request_scoped_dispatcher() -> None:
    with pytest.raises(TypeError, match="RequestScopedEventDispatcher"):
        OptimizelyWSGIMiddleware(lambda e, s: [], object())  # type: ignore[arg-type]


def test_a_body_collected_while_the_dispatcher_is_locked_does_not_deadlock(setup: Setup) -> None:
    # The cyclic collector can run inside any allocation, on a thread that holds
    # the dispatcher's lock; handing over from there would wait on that lock forever.
    middleware = OptimizelyWSGIMiddleware(setup.path_app(), setup.dispatcher)
    body = Server(path="/cyclic").call(middleware)
    assert next(iter(body)) == b"done"
    cycle: list[Any] = [body]
    cycle.append(cycle)
    del body, cycle
    finished = threading.Event()

    def collect_holding_the_lock() -> None:
        with setup.dispatcher._lock:
            gc.collect()
        finished.set()

    collector = threading.Thread(target=collect_holding_the_lock, daemon=True)
    collector.start()
    assert finished.wait(10), "gc.collect() deadlocked on the dispatcher's lock"
    assert setup.sink.batches == []  # not lost: handed over by the next request

    Server(path="/next").serve(middleware)
    assert setup.users(0) == ["cyclic"]
    assert setup.users(1) == ["next"]
    assert setup.dispatcher.stats()["open_scopes"] == 0


def test_scoped_iterators_run_in_the_scope_and_mark_a_raise_as_failed() -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())

    def chunks() -> Iterator[bytes]:
        yield b"one" if dispatcher.current_scope() is request.scope else b"outside"
        raise ValueError("broken stream")

    async def async_chunks() -> AsyncIterator[bytes]:
        yield b"one" if dispatcher.current_scope() is request.scope else b"outside"
        raise ValueError("broken stream")

    async def read_all(stream: ScopedAsyncIterator[bytes]) -> list[bytes]:
        return [chunk async for chunk in stream]

    request = ScopedRequest(dispatcher)
    sync_stream = ScopedIterator(chunks(), request)
    assert next(sync_stream) == b"one"
    assert not request.scope.failed
    with pytest.raises(ValueError):
        next(sync_stream)
    assert request.scope.failed

    request = ScopedRequest(dispatcher)
    with pytest.raises(ValueError):
        asyncio.run(read_all(ScopedAsyncIterator(async_chunks(), request)))
    assert request.scope.failed

    request = ScopedRequest(dispatcher)
    assert list(ScopedIterator([b"a", b"b"], request)) == [b"a", b"b"]
    assert not request.scope.failed  # the end of the stream is not a failure

"""Flask under real uWSGI (pyuwsgi), preforking without --lazy-apps, with an
event sent in the master at import, and with --max-requests recycling; plus
the uWSGI checks of optimizely_middleware.process.uwsgi against a stand-in module.

uWSGI is stopped gracefully through its master FIFO (``q``): in uWSGI 2.0
SIGTERM means a brutal reload and SIGINT/SIGQUIT kill the workers at once.
"""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from optimizely_middleware import WiringWarning
from optimizely_middleware.process.uwsgi import (
    ChainedAtexit,
    ChainedPostFork,
    check_uwsgi,
    uwsgi_threads_disabled,
)
from tests.support.endpoint import EventEndpoint
from tests.support.load import Load, assert_exactly_once, report, run_load
from tests.support.servers import VENV_BIN, ServerProcess, free_port, running

WORKERS = 2


def uwsgi(port: int, fifo: Path, *args: str) -> list[str]:
    return [
        str(VENV_BIN / "uwsgi"),
        "--http-socket",
        f"127.0.0.1:{port}",
        "--master",
        "--processes",
        str(WORKERS),
        "--module",
        "tests.apps.e2e_flask:app",
        "--need-app",
        "--master-fifo",
        str(fifo),
        "--disable-logging",  # no line per request
        *args,
    ]


def graceful_stop(server: ServerProcess, fifo: Path) -> int:
    """``q`` on the master FIFO: uWSGI's graceful shutdown of every worker."""
    started = time.monotonic()
    fifo.write_text("q")
    try:
        # A graceful stop takes about a second here; a hung worker is only let go
        # after uWSGI's 60 s mercy, which the test does not wait for.
        code = server.wait(20.0)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"uWSGI did not stop:\n{server.log}") from None
    server.stop_seconds = time.monotonic() - started
    return code


# A worker C-forked while a sender thread is alive in the master (it sent an
# event at import) could hang for good: in threading.Thread.start() on its
# first hand-off without py-call-osafterfork, or before any Python runs with
# it. In a uWSGI master the sender therefore delivers at the hand-off and
# retires its threads before the fork.
@pytest.mark.slow
@pytest.mark.parametrize(
    "fork_option",
    [
        pytest.param((), id="plain"),
        pytest.param(("--py-call-osafterfork",), id="py-call-osafterfork"),
    ],
)
def test_prefork_with_an_event_sent_in_the_master_delivers_every_event_once(
    fork_option: tuple[str, ...], event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    port, fifo, n = free_port(), tmp_path / "fifo", 300
    with running(
        uwsgi(port, fifo, *fork_option),
        event_endpoint,
        port,
        ready=f"spawned uWSGI worker {WORKERS}",
        OPTIMIZELY_TEST_STARTUP_EVENT="1",
    ) as server:
        event_endpoint.hold()
        # A hung worker fails the test in seconds (a request takes ~10 ms here).
        load = run_load(port, n, timeout=5.0)
        event_endpoint.release()
        code = graceful_stop(server, fifo)
    arrived = assert_exactly_once(event_endpoint, load.users, extra={"startup": 1})
    assert code == 0, server.log
    assert server.count("exits: delivering the queued Optimizely events") >= WORKERS
    assert "threads disabled" not in server.log  # threads are on by default in uWSGI 2.0.30
    report(
        f"uWSGI prefork {' '.join(fork_option)}, event in master",
        3 * n + 1,
        arrived,
        stop_s=f"{server.stop_seconds:.2f}",
        p99_ms=f"{load.p99() * 1000:.0f}",
    )


@pytest.mark.slow
def test_lazy_apps_with_an_event_sent_at_import_delivers_every_event_once(
    event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    """What to run when something sends at import: each worker imports the app
    (and sends its own "startup" event) after the fork."""
    port, fifo, n = free_port(), tmp_path / "fifo", 300
    with running(
        uwsgi(port, fifo, "--lazy-apps"),
        event_endpoint,
        port,
        ready=f"spawned uWSGI worker {WORKERS}",
        OPTIMIZELY_TEST_STARTUP_EVENT="1",
    ) as server:
        server.wait_for_line("WSGI app 0 .* ready", WORKERS)
        event_endpoint.hold()
        load = run_load(port, n, timeout=5.0)
        event_endpoint.release()
        code = graceful_stop(server, fifo)
    arrived = assert_exactly_once(event_endpoint, load.users, extra={"startup": WORKERS})
    assert code == 0, server.log
    assert "forked this worker" not in server.log
    assert server.count("exits: delivering the queued Optimizely events") >= WORKERS
    report(
        "uWSGI --lazy-apps, event at import",
        3 * n + WORKERS,
        arrived,
        stop_s=f"{server.stop_seconds:.2f}",
    )


@pytest.mark.slow
def test_max_requests_recycling_delivers_every_event_once(
    event_endpoint: EventEndpoint, tmp_path: Path
) -> None:
    port, fifo = free_port(), tmp_path / "fifo"
    with running(
        uwsgi(
            port,
            fifo,
            "--max-requests",
            "40",
            "--min-worker-lifetime",
            "1",
            # More respawns than workers within a second make the master sleep
            # ("worker respawning too fast"); a graceful stop that came meanwhile
            # once left the new worker unsignalled, the master waiting its 60 s
            # mercy. The test recycles on purpose: no fork-bomb throttle.
            "--forkbomb-delay",
            "0",
        ),
        event_endpoint,
        port,
        ready=f"spawned uWSGI worker {WORKERS}",
    ) as server:
        # Rounds of 40 requests until two workers were recycled (uWSGI recycles
        # none younger than --min-worker-lifetime=1 s); the cap only ends a run
        # where recycling never happens, which then fails below.
        users: list[str] = []
        latencies: list[float] = []
        deadline = time.monotonic() + 30.0
        while server.count("Respawned uWSGI worker") < 2 and time.monotonic() < deadline:
            load = run_load(port, 40, prefix=f"r{len(users)}-")
            users += load.users
            latencies += load.latencies
        code = graceful_stop(server, fifo)
    n = len(users)
    load = Load(users, latencies)
    arrived = assert_exactly_once(event_endpoint, users)
    assert code == 0, server.log
    recycled = server.count(r"Respawned uWSGI worker")
    assert recycled >= 2, server.log
    # uwsgi.atexit (chained by the package) ran in every worker that exited.
    assert server.count("exits: delivering the queued Optimizely events") >= WORKERS + recycled
    report(
        "uWSGI prefork --max-requests 40",
        3 * n,
        arrived,
        recycled=recycled,
        stop_s=f"{server.stop_seconds:.2f}",
        p99_ms=f"{load.p99() * 1000:.0f}",
    )


# -- optimizely_middleware.process.uwsgi against a stand-in uwsgi module ------------------


def test_threads_disabled_is_read_from_has_threads_or_the_options() -> None:
    assert uwsgi_threads_disabled(SimpleNamespace(has_threads=0, opt={}))
    assert not uwsgi_threads_disabled(SimpleNamespace(has_threads=1, opt={}))
    # uWSGI versions without has_threads: --enable-threads or --threads N
    assert uwsgi_threads_disabled(SimpleNamespace(opt={"processes": b"4"}))
    assert not uwsgi_threads_disabled(SimpleNamespace(opt={"enable-threads": True}))
    assert not uwsgi_threads_disabled(SimpleNamespace(opt={"threads": b"4"}))


def test_threads_disabled_warns_with_the_fix() -> None:
    fake = SimpleNamespace(has_threads=0, opt={})
    with pytest.warns(WiringWarning, match="--enable-threads") as record:
        assert check_uwsgi(fake)
    assert "--threads N" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WiringWarning)
        check_uwsgi(SimpleNamespace(has_threads=1, opt={}))


def test_uwsgi_atexit_is_chained_once_and_the_previous_hook_still_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []
    monkeypatch.setattr(
        "optimizely_middleware.process.uwsgi.run_package_exit_hooks",
        lambda: order.append("ours"),
    )
    fake = SimpleNamespace(has_threads=1, opt={}, atexit=lambda: order.append("previous"))
    check_uwsgi(fake)
    check_uwsgi(fake)  # the package imported twice: still one link
    assert isinstance(fake.atexit, ChainedAtexit)
    assert not isinstance(fake.atexit.previous, ChainedAtexit)
    fake.atexit()
    assert order == ["ours", "previous"]


def test_a_worker_forked_while_the_master_ran_threads_is_warned_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    fake = SimpleNamespace(has_threads=1, opt={}, post_fork_hook=lambda: ran.append("previous"))
    check_uwsgi(fake)
    check_uwsgi(fake)
    assert isinstance(fake.post_fork_hook, ChainedPostFork)
    assert not isinstance(fake.post_fork_hook.previous, ChainedPostFork)
    monkeypatch.setattr(
        "optimizely_middleware.process.uwsgi.threads_left_by_fork",
        lambda: ["optimizely-event-sender-1"],
    )
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        fake.post_fork_hook()
    assert ran == ["previous"]
    assert "optimizely-event-sender-1" in caplog.text
    assert "lazy-apps = true" in caplog.text


def test_outside_uwsgi_nothing_happens() -> None:
    assert check_uwsgi() is False

"""process_hooks: one atexit handler running the phases in their stated order, fork
hooks in order, and the live-sender registry the testing kit relies on."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest

from optimizely_middleware import process_hooks
from optimizely_middleware.process_hooks import Registry


def test_exit_phases_run_in_their_stated_order_whatever_the_registration_order() -> None:
    script = textwrap.dedent(
        """
        from optimizely_middleware import process_hooks

        process_hooks.on_exit("close_senders", lambda: print("close_senders"))
        process_hooks.on_exit("close_apps", lambda: print("close_apps"))
        process_hooks.on_exit("hand_over", lambda: print("hand_over 1"))
        process_hooks.on_exit("hand_over", lambda: print("hand_over 2"))
        def broken():
            raise RuntimeError("a hook that fails")
        process_hooks.on_exit("close_apps", broken)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == [
        "hand_over 1",
        "hand_over 2",
        "close_apps",
        "close_senders",
    ]
    assert "a hook that fails" in result.stderr  # logged; the later phases still ran


def test_the_package_registers_its_own_hooks_in_the_right_phases() -> None:
    import optimizely_middleware.delivery.sender as sender
    import optimizely_middleware.integrations.wsgi as wsgi

    assert wsgi.hand_over_released_bodies in process_hooks._exit_hooks["hand_over"]
    assert sender._close_senders_at_exit in process_hooks._exit_hooks["close_senders"]
    assert sender._reset_senders_in_child in process_hooks._fork_hooks["senders"]
    assert wsgi._track_collection in gc.callbacks
    assert gc.callbacks.count(wsgi._track_collection) == 1


def test_unknown_phases_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown exit phase"):
        process_hooks.on_exit("whenever", lambda: None)
    with pytest.raises(ValueError, match="unknown fork phase"):
        process_hooks.on_fork_in_child("whenever", lambda: None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_hooks_run_in_the_child_in_phase_order(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    hooks: dict[str, list[object]] = {phase: [] for phase in process_hooks.FORK_PHASES}
    monkeypatch.setattr(process_hooks, "_fork_hooks", hooks)
    process_hooks.on_fork_in_child("senders", lambda: order.append("senders"))
    process_hooks.on_fork_in_child("transports", lambda: order.append("transports"))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write_end, ",".join(order).encode())
        os._exit(0)
    os.close(write_end)
    seen = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert seen == "transports,senders"
    assert order == []  # not in the parent


class Thing:
    pass


def test_the_registry_holds_weakly_and_announces_new_items() -> None:
    registry: Registry[Thing] = Registry()
    seen: list[Thing] = []
    unsubscribe = registry.subscribe(seen.append)
    first = Thing()
    registry.add(first)
    unsubscribe()
    second = Thing()
    registry.add(second)
    assert seen == [first]
    assert set(map(id, registry.live())) == {id(first), id(second)}
    del first, seen, unsubscribe  # (the unsubscribe holds seen.append)
    gc.collect()
    assert [id(t) for t in registry.live()] == [id(second)]


def test_a_raising_subscriber_does_not_stop_the_registration() -> None:
    registry: Registry[Thing] = Registry()

    def broken(thing: Thing) -> None:
        raise RuntimeError("subscriber bug")

    registry.subscribe(broken)
    thing = Thing()
    registry.add(thing)
    assert registry.live() == [thing]


def test_the_exit_phases_run_once_however_many_exit_paths_call_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []
    hooks: dict[str, list[object]] = {phase: [] for phase in process_hooks.EXIT_PHASES}
    monkeypatch.setattr(process_hooks, "_exit_hooks", hooks)
    monkeypatch.setattr(process_hooks, "_exited", False)
    process_hooks.on_exit("close_senders", lambda: ran.append("close_senders"))
    process_hooks.run_exit_hooks()  # e.g. uwsgi.atexit ...
    process_hooks.run_exit_hooks()  # ... then Python's atexit
    assert ran == ["close_senders"]

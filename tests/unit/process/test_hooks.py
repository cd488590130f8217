"""process.hooks: one atexit handler running the phases in their stated order, the one
fork check every stateful part registers with, and the registry of live parts."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from optimizely_middleware.process import hooks
from optimizely_middleware.process.hooks import ExitHooks, ForkCheck, Registry


def test_exit_phases_run_in_their_stated_order_whatever_the_registration_order() -> None:
    script = textwrap.dedent(
        """
        from optimizely_middleware.process import hooks

        hooks.on_exit("close_senders", lambda: print("close_senders"))
        hooks.on_exit("close_apps", lambda: print("close_apps"))
        hooks.on_exit("hand_over", lambda: print("hand_over 1"))
        hooks.on_exit("hand_over", lambda: print("hand_over 2"))
        remove = hooks.on_exit("hand_over", lambda: print("removed"))
        remove()
        def broken():
            raise RuntimeError("a hook that fails")
        hooks.on_exit("close_apps", broken)
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
    assert "removed" not in result.stdout
    assert "a hook that fails" in result.stderr  # logged; the later phases still ran


def test_the_package_registers_its_own_hooks_in_the_right_phases() -> None:
    import optimizely_middleware.delivery.sender as sender
    import optimizely_middleware.integrations.wsgi as wsgi

    assert wsgi.hand_over_released_bodies in hooks._exit.hooks["hand_over"]
    assert sender._close_senders_at_exit in hooks._exit.hooks["close_senders"]
    assert wsgi._track_collection in gc.callbacks
    assert gc.callbacks.count(wsgi._track_collection) == 1


def test_unknown_exit_phases_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown exit phase"):
        hooks.on_exit("whenever", lambda: None)


def test_the_exit_phases_run_once_however_many_exit_paths_call_them() -> None:
    ran: list[str] = []
    exit_hooks = ExitHooks()
    exit_hooks.add("close_senders", lambda: ran.append("close_senders"))
    exit_hooks.run()  # e.g. uwsgi.atexit ...
    exit_hooks.run()  # ... then Python's atexit
    assert ran == ["close_senders"]


class Part:
    def __init__(self, name: str, told: list[str]) -> None:
        self.name = name
        self.told = told

    def after_fork_in_child(self) -> None:
        self.told.append(self.name)


def test_a_new_pid_tells_every_live_part_once_in_registration_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    told: list[str] = []
    forks = ForkCheck()
    parts = [Part("transport", told), Part("gone", told), Part("engine", told)]
    for part in parts:
        forks.register(part)
    del parts[1]
    gc.collect()
    assert not forks.check() and told == []
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    assert forks.check()
    assert not forks.check()  # once per process
    assert told == ["transport", "engine"]


def test_threads_that_notice_the_new_pid_together_renew_the_parts_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    told: list[str] = []
    forks = ForkCheck()
    entered, release = threading.Event(), threading.Event()

    class Slow(Part):
        def after_fork_in_child(self) -> None:
            entered.set()
            release.wait(10)
            super().after_fork_in_child()

    part = Slow("slow", told)
    forks.register(part)
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    first = threading.Thread(target=forks.check)
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=forks.check)
    second.start()
    second.join(0.2)
    assert second.is_alive()  # waits for the first thread's renewal, does not run its own
    release.set()
    first.join(10)
    second.join(10)
    assert told == ["slow"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_at_fork_hook_runs_the_check_in_a_real_child() -> None:
    told: list[str] = []
    part = Part("part", told)
    hooks.on_fork(part)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write_end, ",".join(told).encode())  # before any check_fork() call here
        os._exit(0)
    os.close(write_end)
    seen = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert seen == "part"
    assert told == []  # not in the parent


def test_the_registry_holds_weakly_and_announces_new_items() -> None:
    registry: Registry[Part] = Registry()
    seen: list[Part] = []
    unsubscribe = registry.subscribe(seen.append)
    first = Part("first", [])
    registry.add(first)
    unsubscribe()
    second = Part("second", [])
    registry.add(second)
    assert seen == [first]
    assert set(map(id, registry.live())) == {id(first), id(second)}
    del first, seen, unsubscribe  # (the unsubscribe holds seen.append)
    gc.collect()
    assert [id(t) for t in registry.live()] == [id(second)]


def test_a_raising_subscriber_does_not_stop_the_registration() -> None:
    registry: Registry[Part] = Registry()

    def broken(thing: Part) -> None:
        raise RuntimeError("subscriber bug")

    registry.subscribe(broken)
    thing = Part("thing", [])
    registry.add(thing)
    assert registry.live() == [thing]

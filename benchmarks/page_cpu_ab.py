"""The package at another commit beside this one, in one process: per-page CPU, before and after.

``page_cpu_interleaved.py`` measures one package against the SDK; two runs
of it, one per commit, differ by more than a change of a few percent when
the machine's speed drifts between them. This one loads the other tree's
package as well (a copy whose modules are renamed
``optimizely_middleware_before``) and runs the two side by side: 20 rounds
of 300 pages of the benchmark page for each wiring, the baseline, the other
tree and this one alternating within each round (the order flips every
round). Two figures per page, each a median of the per-round ratios:

* **the hand-off**: the request thread's CPU from the end of the page to the
  end of the request scope (the scope's close, the encoding of its events,
  filing them);
* **whole process**: ``process_time`` from the block's first page until its
  ``flush`` returns (the POSTs included).

Every event of both packages must reach the local endpoint once.

Usage::

    git worktree add ../before <commit>
    python benchmarks/page_cpu_ab.py ../before                       # both wirings
    python benchmarks/page_cpu_ab.py ../before --wirings dispatcher --rounds 30
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

from page_cpu import DEFAULT_DATAFILE
from page_cpu_interleaved import run_block
from page_procs import Endpoint, delivered_once, describe_machine, format_load, median_ratio
from page_variants import build_variant, forwarding_client, guard_loopback, point_sdk_at

PACKAGE = "optimizely_middleware"
BEFORE = "optimizely_middleware_before"
WIRINGS = ("dispatcher", "package")


def import_tree_as_before(tree: Path, into: Path) -> ModuleType:
    """Import ``tree``'s package under the name :data:`BEFORE` (a renamed copy in ``into``)."""
    source = tree / PACKAGE
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"no {PACKAGE} package in {tree}")
    target = into / BEFORE
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    name = re.compile(rf"\b{PACKAGE}\b")
    for path in target.rglob("*.py"):
        path.write_text(name.sub(BEFORE, path.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module(BEFORE)


def build(package: ModuleType, wiring: str, datafile: str, url: str) -> tuple[Any, Any]:
    """(client, dispatcher) of ``package`` in ``wiring``, delivering to ``url``."""
    dispatcher = package.RequestScopedEventDispatcher(package.EventSender(endpoint=url))
    if wiring == "dispatcher":  # the SDK builds LogEvents; the package delivers them
        return forwarding_client(datafile, dispatcher), dispatcher
    return package.create_client(dispatcher, datafile=datafile), dispatcher


def no_flush() -> None:
    """The baseline delivers nothing: nothing to wait for."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="a tree of the package at another commit")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (20)")
    parser.add_argument("--pages", type=int, default=300, help="pages per block (300)")
    parser.add_argument("--wirings", default=",".join(WIRINGS), help="dispatcher,package")
    args = parser.parse_args(argv)
    wirings = [w.strip() for w in args.wirings.split(",") if w.strip()]
    for wiring in wirings:
        if wiring not in WIRINGS:
            raise SystemExit(f"unknown wiring {wiring!r}; choose from {', '.join(WIRINGS)}")
    load_before = os.getloadavg()
    print(describe_machine(), flush=True)
    print(f"# before: {PACKAGE} from {args.before.resolve()}", flush=True)
    endpoint = Endpoint("delay", 0.1).start()
    scratch = Path(tempfile.mkdtemp(prefix="page-cpu-ab-"))
    built: list[Any] = []
    try:
        guard_loopback()
        point_sdk_at(endpoint.url)
        datafile = DEFAULT_DATAFILE.read_text()
        packages = {
            "before": import_tree_as_before(args.before, scratch),
            "after": importlib.import_module(PACKAGE),
        }
        for name, package in packages.items():
            dispatcher_class = package.RequestScopedEventDispatcher
            print(
                f"# {name}: {dispatcher_class.__module__}.{dispatcher_class.__name__}", flush=True
            )
        baseline = build_variant("baseline", datafile).client
        print(
            f"# {args.rounds} rounds of {args.pages} pages per wiring; the baseline, "
            "before and after alternate in each round\n"
            "\n| wiring | hand-off µs/page, before / after | after / before (range) "
            "| whole process µs/page, before / after | after / before (range) "
            "| x baseline, before / after |\n|---|---|---|---|---|---|",
            flush=True,
        )
        for wiring in wirings:
            clients = {
                name: build(package, wiring, datafile, endpoint.url)
                for name, package in packages.items()
            }
            built.extend(dispatcher for _, dispatcher in clients.values())
            spent: dict[str, dict[str, list[float]]] = {
                name: {"handoff": [], "whole": []} for name in clients
            }
            base: list[float] = []
            for round_ in range(args.rounds + 1):  # round 0 warms up
                order = ["before", "after"] if round_ % 2 else ["after", "before"]
                base_tag = f"base-{round_}"
                *_, base_us = run_block(baseline, nullcontext, no_flush, args.pages, base_tag)
                for name in order:
                    client, dispatcher = clients[name]
                    tag = f"{name}-{round_}"
                    scope, flush = dispatcher.request_scope, dispatcher.flush
                    response, thread, whole = run_block(client, scope, flush, args.pages, tag)
                    if round_:
                        spent[name]["handoff"].append(thread - response)
                        spent[name]["whole"].append(whole)
                if round_:
                    base.append(base_us)
            before, after = spent["before"], spent["after"]
            handoff_x = median_ratio(after["handoff"], before["handoff"])
            whole_x = median_ratio(after["whole"], before["whole"])
            print(
                f"| {wiring} "
                f"| {statistics.median(before['handoff']):.1f} / "
                f"{statistics.median(after['handoff']):.1f} "
                f"| {handoff_x[0]:.3f}x ({handoff_x[1]:.2f}-{handoff_x[2]:.2f}) "
                f"| {statistics.median(before['whole']):.0f} / "
                f"{statistics.median(after['whole']):.0f} "
                f"| {whole_x[0]:.3f}x ({whole_x[1]:.2f}-{whole_x[2]:.2f}) "
                f"| {median_ratio(before['whole'], base)[0]:.2f}x / "
                f"{median_ratio(after['whole'], base)[0]:.2f}x |",
                flush=True,
            )
        expected = 2 * 3 * args.pages * (args.rounds + 1) * len(wirings)
        once, unique, repeated = delivered_once(endpoint.settled_counts(), expected)
        print(
            f"\n{'PASS' if once else 'MISS'}  {unique}/{expected} events delivered, "
            f"{repeated} repeated\n# load average before {format_load(load_before)}, "
            f"after {format_load(os.getloadavg())}; {os.cpu_count()} CPUs"
        )
        return 0 if once else 1
    finally:
        for dispatcher in built:
            dispatcher.close(10)
        endpoint.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

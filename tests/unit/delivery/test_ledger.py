"""DropLedger: the one record_lost_event path, its named reasons, and a new process."""

from __future__ import annotations

import json
import logging

import pytest

from optimizely_middleware.delivery.drops import DropReason
from optimizely_middleware.delivery.ledger import DropLedger


def test_lost_events_are_counted_by_reason_logged_and_passed_to_on_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lost: list[tuple[list[object], str]] = []
    ledger = DropLedger(on_error=lambda items, reason: lost.append((items, reason)))
    with caplog.at_level(logging.ERROR, logger="optimizely_middleware.sender"):
        ledger.record_lost_event(DropReason.QUEUE_FULL, 2, ["a", None])
        ledger.record_lost_event(DropReason.REJECTED, 1, detail="HTTP 400 from http://h/p?key=s")
        ledger.record_lost_event(DropReason.CLOSED, 0, ["never"])
    assert ledger.dropped() == {"queue_full": 2, "rejected": 1}
    assert json.dumps(ledger.dropped()) == '{"queue_full": 2, "rejected": 1}'
    assert lost == [(["a"], "queue_full")]
    assert "[queue_full]: the queue is full (max_queue_events)" in caplog.text
    assert "key=s" not in caplog.text


def test_a_ledger_without_a_log_only_counts(caplog: pytest.LogCaptureFixture) -> None:
    ledger = DropLedger(log=False)
    with caplog.at_level(logging.DEBUG):
        ledger.record_lost_event(DropReason.FAILED_REQUEST, 3)
        ledger.close_report(delivered_events=0, delivered_posts=0)
    assert ledger.dropped() == {"failed_request": 3}
    assert caplog.records == []


def test_a_raising_on_error_is_logged_and_the_drop_still_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(items: list[object], reason: str) -> None:
        raise RuntimeError("callback bug")

    ledger = DropLedger(on_error=broken)
    ledger.record_lost_event(DropReason.SHUTDOWN, 1, ["item"])
    assert ledger.dropped() == {"shutdown": 1}
    assert "The on_error callback raised; ignored." in caplog.text


def test_a_forked_child_counts_only_its_own_drops() -> None:
    ledger = DropLedger()
    ledger.record_lost_event(DropReason.QUEUE_BYTES, 4)
    ledger.after_fork_in_child()  # what the fork check calls in a child
    assert ledger.dropped() == {}


def test_every_reason_says_why() -> None:
    for reason in DropReason:
        assert reason.why and str(reason) == reason.value


def test_what_a_close_gave_up_on_is_counted_as_shutdown_and_named_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lost: list[tuple[list[object], str]] = []
    ledger = DropLedger(on_error=lambda items, reason: lost.append((items, reason)))
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware.sender"):
        ledger.lost_at_shutdown(queued=1, encoding=2, unconfirmed=3, items=["queued"])
    assert ledger.dropped() == {"shutdown": 6}
    assert lost == [(["queued"], "shutdown")]
    assert (
        "6 Optimizely events were not delivered at shutdown: 1 queued, 2 still being "
        "encoded at a hand-off, 3 in a POST still unconfirmed." in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware.sender"):
        DropLedger().lost_at_shutdown(queued=0, encoding=0, unconfirmed=0)
    assert caplog.records == []

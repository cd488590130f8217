"""HandOffEncoding on its own: slices bounded by a clock, failures kept apart, seqs in order."""

from __future__ import annotations

from optimizely_middleware.delivery.encoded import EncodedEvent, UnserializableEvent
from optimizely_middleware.delivery.handoff import SMALL_HANDOFF, HandOffEncoding
from tests.support.clocks import TickingClock


class FakeEncoder:
    """Encodes an int as its visitor; refuses negative ones; fails on ``"bug"``."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, item: object) -> EncodedEvent:
        self.calls += 1
        if item == "bug":
            raise KeyError("a bug in an encoder")
        assert isinstance(item, int)
        if item < 0:
            raise UnserializableEvent("a negative event")
        return EncodedEvent(
            key="k", url="u", headers={}, prefix=b"[", visitors=b"%d" % item, suffix=b"]"
        )


def test_slices_end_when_the_budget_is_spent_and_the_last_one_does_not_yield() -> None:
    encoding = HandOffEncoding(FakeEncoder(), list(range(1000)), first_seq=0, queued_at=0.0)
    # 0.3 ms per clock read, 1 ms per slice: 4 events per slice.
    yields = sum(1 for _ in encoding.slices(0.001, TickingClock(0.0003)))
    assert (encoding.slice_count, yields) == (250, 249)
    assert [e.visitors for e in encoding.encoded] == [b"%d" % i for i in range(1000)]


def test_a_small_hand_off_is_one_slice_with_no_yield() -> None:
    encoding = HandOffEncoding(FakeEncoder(), [1, 2, 3], first_seq=7, queued_at=1.5)
    assert list(encoding.slices(0.001, TickingClock(0.0001))) == []
    assert encoding.slice_count == 1
    assert [e.visitors for e in encoding.encoded] == [b"1", b"2", b"3"]
    assert (encoding.first_seq, encoding.queued_at) == (7, 1.5)


def test_unencodable_items_are_kept_apart_with_a_reason_that_names_no_payload() -> None:
    encoding = HandOffEncoding(FakeEncoder(), [1, -1, "bug", 2], first_seq=0, queued_at=0.0)
    encoding.finish()
    assert [e.visitors for e in encoding.encoded] == [b"1", b"2"]
    assert encoding.failed == [
        (-1, "a negative event"),
        ("bug", "KeyError while encoding the event"),
    ]
    assert encoding.done == 4


def test_finish_encodes_what_the_slices_left() -> None:
    encoder = FakeEncoder()
    encoding = HandOffEncoding(encoder, list(range(20)), first_seq=0, queued_at=0.0)
    slices = encoding.slices(0.001, TickingClock(0.0003))
    next(slices)  # one slice done, then interrupted (a cancelled task)
    assert encoding.done == 4
    encoding.finish()
    assert (encoding.done, encoder.calls) == (20, 20)  # nothing encoded twice


def test_a_page_sized_hand_off_is_small_and_finish_encodes_it_in_order() -> None:
    small = HandOffEncoding(FakeEncoder(), list(range(SMALL_HANDOFF)), first_seq=3, queued_at=0.0)
    assert small.small
    small.finish()
    assert [e.visitors for e in small.encoded] == [b"%d" % i for i in range(SMALL_HANDOFF)]
    larger = list(range(SMALL_HANDOFF + 1))
    assert not HandOffEncoding(FakeEncoder(), larger, first_seq=0, queued_at=0.0).small

"""BatchQueue and LingerOrFull on their own: reservations, bounds, byte accounting, batches."""

from __future__ import annotations

import pytest

from optimizely_middleware.delivery.batch_queue import BatchQueue, LingerOrFull
from optimizely_middleware.delivery.encoded import EncodedEvent


def encoded(visitor: bytes, key: str = "k") -> EncodedEvent:
    return EncodedEvent(
        key=key, url="u", headers={}, prefix=b'{"visitors":[', visitors=visitor, suffix=b"]}"
    )


def queue(max_events: int = 10, max_bytes: int = 1000, linger: float = 1.0) -> BatchQueue:
    strategy = LingerOrFull(max_events=max_events, max_bytes=max_bytes, linger=linger)
    return BatchQueue(max_events=100, max_bytes=10_000, strategy=strategy)


def fill(q: BatchQueue, visitors: list[bytes], key: str = "k") -> None:
    first = q.next_seq
    assert q.reserve(len(visitors)) == len(visitors)
    assert q.add_all([encoded(v, key) for v in visitors], first, 0.0, False) == 0


def test_the_count_bound_takes_what_fits_and_refuses_the_rest() -> None:
    q = queue()
    q.max_events = 5
    assert q.reserve(3) == 3
    assert q.reserve(3) == 2
    assert q.reserve(1) == 0
    assert (q.count, q.next_seq, q.queued) == (5, 5, 0)
    q.release(2)  # two reserved events will not be filed (unencodable)
    assert q.reserve(3) == 2


@pytest.mark.parametrize("n", [1, 3, 10])
def test_a_whole_group_that_fits_is_one_batch_and_the_bytes_return_to_zero(n: int) -> None:
    q = queue()
    fill(q, [b'{"v":%d}' % i for i in range(n)])
    batch, wait = q.next_batch(now=5.0, urgent=False)
    assert batch is not None and wait is None
    assert len(batch) == n
    assert batch.body() == b'{"visitors":[' + b",".join(b'{"v":%d}' % i for i in range(n)) + b"]}"
    assert (q.count, q.nbytes, q.has_encoded) == (0, 0, False)


def test_caps_split_a_group_and_the_byte_accounting_stays_exact() -> None:
    q = queue(max_events=4, max_bytes=40)
    visitors = [b'{"v":%d}' % i for i in range(10)]  # 7 bytes each, envelope 15
    fill(q, visitors)
    sizes = []
    while q.has_encoded:
        before = q.nbytes
        batch, _ = q.next_batch(now=5.0, urgent=False)
        assert batch is not None
        body = batch.body()
        assert len(body) <= 40 or len(batch) == 1
        assert before - q.nbytes == len(batch) * 15 + sum(len(v) for v in visitors[: len(batch)])
        sizes.append(len(batch))
    assert sizes == [3, 3, 3, 1]  # 15 + 3*7 + 2 = 38 <= 40; a fourth would be 46
    assert (q.count, q.nbytes) == (0, 0)


def test_a_group_lingers_until_its_oldest_event_has_waited() -> None:
    q = queue(linger=1.0)
    fill(q, [b"{}"])
    assert q.next_batch(now=0.5, urgent=False) == (None, 1.0)
    batch, _ = q.next_batch(now=0.5, urgent=True)  # flushing: at once
    assert batch is not None


def test_a_full_group_goes_before_its_linger_ends() -> None:
    q = queue(max_events=2, linger=60.0)
    fill(q, [b"{}", b"{}"])
    batch, _ = q.next_batch(now=0.0, urgent=False)
    assert batch is not None and len(batch) == 2


def test_the_group_with_the_oldest_event_goes_first() -> None:
    q = queue()
    fill(q, [b"{}"], key="a")
    fill(q, [b"{}"], key="b")
    first, _ = q.next_batch(now=5.0, urgent=False)
    assert first is not None and first.first_seq == 0


def test_the_byte_bound_refuses_encoded_events_past_it() -> None:
    strategy = LingerOrFull(max_events=10, max_bytes=40, linger=1.0)
    q = BatchQueue(max_events=10, max_bytes=40, strategy=strategy)
    q.reserve(3)
    # 27 bytes each with its envelope: the second is refused
    assert q.add_all([encoded(b"x" * 10), encoded(b"x" * 10)], 0, 0.0, False) == 1
    assert q.count == 2  # the refused one is released; one still reserved


@pytest.mark.parametrize(("events", "nbytes"), [(11, 1000), (10, 1001)], ids=["count", "bytes"])
def test_a_post_larger_than_the_queue_is_refused_at_construction(events: int, nbytes: int) -> None:
    strategy = LingerOrFull(max_events=events, max_bytes=nbytes, linger=1.0)
    with pytest.raises(ValueError, match="could never be queued"):
        BatchQueue(max_events=10, max_bytes=1000, strategy=strategy)


def test_a_group_becomes_full_by_count() -> None:
    q = queue(max_events=2, linger=60.0)
    fill(q, [b"{}"])
    assert not q.became_full
    fill(q, [b"{}"])
    assert q.became_full


def test_a_hand_off_is_numbered_from_its_first_seq_and_a_refused_event_keeps_its_number() -> None:
    strategy = LingerOrFull(max_events=10, max_bytes=60, linger=1.0)
    q = BatchQueue(max_events=10, max_bytes=60, strategy=strategy)
    q.reserve(5)
    # 25 bytes with its envelope, then 36 (past the queue's 60: refused), then 25.
    events = [encoded(b"x" * 10), encoded(b"y" * 21), encoded(b"z" * 10)]
    assert q.add_all(events, 2, 4.5, keep_events=False) == 1
    batch, _ = q.next_batch(now=0.0, urgent=True)
    assert batch is not None
    assert [(seq, at, visitors) for seq, at, visitors, _ in batch.items] == [
        (2, 4.5, b"x" * 10),
        (4, 4.5, b"z" * 10),
    ]

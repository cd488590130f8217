"""BatchQueue and LingerOrFull on their own: bounds, byte accounting, batch selection."""

from __future__ import annotations

import pytest

from optimizely_middleware.batch_queue import BatchQueue, LingerOrFull
from optimizely_middleware.batching import EncodedEvent


def encoded(visitor: bytes, key: str = "k") -> EncodedEvent:
    return EncodedEvent(
        key=key, url="u", headers={}, prefix=b'{"visitors":[', visitors=visitor, suffix=b"]}"
    )


def queue(max_events: int = 10, max_bytes: int = 1000, linger: float = 1.0) -> BatchQueue:
    strategy = LingerOrFull(max_events=max_events, max_bytes=max_bytes, linger=linger)
    return BatchQueue(max_events=100, max_bytes=10_000, strategy=strategy)


def fill(q: BatchQueue, visitors: list[bytes], key: str = "k") -> None:
    q.offer(visitors, now=0.0)
    for seq0, queued_at, items in q.take_raw(1000):
        for offset, visitor in enumerate(items):
            assert q.add_encoded(seq0 + offset, queued_at, encoded(visitor, key), False)  # type: ignore[arg-type]


def test_the_count_bound_takes_what_fits_and_refuses_the_rest() -> None:
    q = queue()
    q.max_events = 5
    assert q.offer([1, 2, 3], 0.0) == 3
    assert q.offer([4, 5, 6], 0.0) == 2
    assert q.offer([7], 0.0) == 0
    assert q.count == q.raw_count == 5


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
    strategy = LingerOrFull(max_events=10, max_bytes=100, linger=1.0)
    q = BatchQueue(max_events=10, max_bytes=40, strategy=strategy)
    q.offer([1, 2, 3], 0.0)
    q.take_raw(10)
    assert q.add_encoded(0, 0.0, encoded(b"x" * 10), False)  # 27 bytes with its envelope
    assert not q.add_encoded(1, 0.0, encoded(b"x" * 10), False)
    assert q.count == 2  # the refused one is forgotten; one still being encoded

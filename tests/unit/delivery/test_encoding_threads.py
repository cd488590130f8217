"""One EventEncoder shared by many threads, as the threads that end requests share it.

Each thread encodes real events (the real client, several datafile revisions
and regions, so the envelope caches fill, miss and start again) and every
body is compared with the SDK's own ``create_log_event``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from optimizely_middleware.delivery import encoded as encoded_module
from optimizely_middleware.delivery.encoded import EncodedEvent, merged_body
from optimizely_middleware.delivery.encoding import EventEncoder, PendingUserEvent
from optimizely_middleware.delivery.visitor_json import canonical_json
from tests.unit.delivery.test_encoding import Capture, sdk_log_event, variant

THREADS = 8
ROUNDS = 40


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every few bytecodes, so that two threads are inside the same
    cache lookup or cache reset as often as possible."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def real_items() -> list[PendingUserEvent]:
    """Real events of three event contexts, interleaved: with a cache of two
    entries nearly every encode misses, and many reset the cache."""
    per_context: list[list[PendingUserEvent]] = []
    for n, (revision, region) in enumerate([("42", None), ("43", "EU"), ("44", "US")]):
        capture = Capture(variant(revision=revision, region=region, holdouts="both"))
        with capture.dispatcher.request_scope():
            for user in range(4):
                context = capture.client.create_user_context(f"u{n}-{user}", {"plan": "pro"})
                context.decide("new_checkout")
                context.track_event("purchase", {"revenue": 100 + user})
        per_context.append(capture.items())
    return [item for group in zip(*per_context, strict=True) for item in group]


def test_threads_sharing_an_encoder_each_get_the_sdks_payload(
    fast_switching: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache of two entries for three event contexts: lookups, misses and
    # resets interleave between the threads all the time.
    monkeypatch.setattr(encoded_module, "ENVELOPE_CACHE_SIZE", 2)
    items = real_items()
    log_events = [sdk_log_event([item]) for item in items]
    expected = [canonical_json([e.url, e.headers, e.params]) for e in log_events]
    encoder = EventEncoder()
    # Every one of these events is plain: none may fall back to the SDK (a race
    # inside the fast path would, and still give the right bytes).
    fallbacks: list[object] = []
    monkeypatch.setattr(encoder, "_encode_via_sdk", lambda item: fallbacks.append(item))
    start = threading.Barrier(THREADS)
    results: list[list[tuple[int, EncodedEvent]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            start.wait()
            for round_ in range(ROUNDS):
                for index in range(len(items)):
                    # Each thread walks the events from its own starting point,
                    # half of the time as the SDK's LogEvents.
                    n = (index + slot * 5 + round_) % len(items)
                    item: Any = log_events[n] if (slot + round_) % 2 else items[n]
                    results[slot].append((n, encoder.encode(item)))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert fallbacks == []
    assert encoder.fast_path
    by_key: dict[Any, set[str]] = {}
    for done in results:
        assert len(done) == ROUNDS * len(items)
        for n, encoded in done:
            body = json.loads(merged_body([encoded]))
            assert canonical_json([encoded.url, encoded.headers, body]) == expected[n]
            envelope = {k: v for k, v in body.items() if k != "visitors"}
            by_key.setdefault(encoded.key, set()).add(canonical_json([encoded.url, envelope]))
    # Events share a key exactly when the SDK would batch them: one envelope per key,
    # and as many keys as there are envelopes.
    assert all(len(envelopes) == 1 for envelopes in by_key.values())
    assert len(by_key) == len({e for envelopes in by_key.values() for e in envelopes}) == 3

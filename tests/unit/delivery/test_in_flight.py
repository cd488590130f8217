"""PostsInFlight on its own: the events in flight, settled once, abandoned at close."""

from __future__ import annotations

from optimizely_middleware.delivery.in_flight import PostsInFlight


def test_a_post_counts_its_events_until_it_settles_and_is_waited_for_until_it_ends() -> None:
    posts = PostsInFlight()
    first = posts.start(7, 3)
    second = posts.start(10, 2)
    assert first != second and posts.events == 5 and posts
    assert posts.is_open(first) and sorted(posts.oldest_seqs()) == [7, 10]
    assert posts.settle(first)
    assert posts.events == 2
    assert not posts.settle(first)  # counted once
    assert posts.events == 2
    assert sorted(posts.oldest_seqs()) == [7, 10]  # settled, but flush() still waits for it
    posts.end(first)
    posts.end(first)  # harmless twice
    assert list(posts.oldest_seqs()) == [10] and not posts.is_open(first)


def test_abandon_gives_the_events_of_every_open_post_and_later_outcomes_count_nothing() -> None:
    posts = PostsInFlight()
    settled = posts.start(0, 4)
    open_one = posts.start(4, 6)
    assert posts.settle(settled)
    assert posts.abandon() == 6  # the settled one holds none any more
    assert posts.events == 0 and not posts and list(posts.oldest_seqs()) == []
    assert not posts.settle(open_one) and posts.events == 0  # close() counted it already

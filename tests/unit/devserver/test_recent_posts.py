"""The devserver's bounded list of POSTs (``optimizely_middleware.devserver.recent_posts``)."""

from __future__ import annotations

import pytest

from optimizely_middleware.devserver.received import ReceivedPost
from optimizely_middleware.devserver.recent_posts import RecentPosts


def received(post_id: int, size: int, status: int = 204) -> ReceivedPost:
    body = b"x" * size
    payload = {"visitors": [{"visitor_id": f"v{post_id}"}]}
    post = ReceivedPost("/v1/events", {}, body, status, 0.0, 0.0, payload=payload)
    post.id = post_id
    return post


def test_lets_the_oldest_go_when_either_limit_is_passed() -> None:
    kept = RecentPosts(max_posts=3, max_bytes=100)
    assert [kept.add(received(n, 30)) for n in (1, 2, 3)] == [0, 0, 0]
    assert kept.add(received(4, 30)) == 1  # the count
    assert kept.add(received(5, 60)) == 2  # the bytes: 30 + 60 fits, 30 + 30 + 60 does not
    assert [p.id for p in kept] == [4, 5]
    assert (kept.bytes, kept.let_go, kept.let_go_bytes) == (90, 3, 90)


def test_the_newest_is_kept_even_alone_over_the_budget() -> None:
    kept = RecentPosts(max_posts=10, max_bytes=100)
    kept.add(received(1, 10))
    assert kept.add(received(2, 500)) == 1
    assert [p.id for p in kept] == [2] and kept.bytes == 500


def test_what_arrived_since_the_clear_counts_kept_or_let_go() -> None:
    kept = RecentPosts(max_posts=1)
    kept.add(received(1, 10))
    kept.add(received(2, 10, status=503))
    kept.add(received(3, 10))
    assert (kept.received, kept.visitors_accepted, kept.visitors_all) == (3, 2, 3)
    assert kept.after(1) == list(kept) and kept.after(3) == []
    assert kept.by_id(3) is not None and kept.by_id(1) is None
    kept.clear()
    assert (len(kept), kept.bytes, kept.received, kept.visitors_all) == (0, 0, 0, 0)
    assert kept.let_go == 2  # clearing is not letting go


@pytest.mark.parametrize("limits", [{"max_posts": 0}, {"max_bytes": 0}, {"max_posts": 1.5}])
def test_limits_are_whole_positive_numbers(limits: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecentPosts(**limits)  # type: ignore[arg-type]

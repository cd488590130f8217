"""The devserver's memory: the newest POSTs, up to a count and a byte budget.

Usage (what :class:`~optimizely_middleware.devserver.DevServer` does, under its lock)::

    from optimizely_middleware.devserver.recent_posts import RecentPosts

    kept = RecentPosts(max_posts=1000, max_bytes=32 * 1024 * 1024)
    kept.add(post)            # older posts are let go when either limit is passed
    kept.let_go               # how many were let go since the start
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optimizely_middleware.devserver.received import ReceivedPost

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_POSTS", "RecentPosts"]

DEFAULT_MAX_POSTS = 1000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class RecentPosts:
    """The newest POSTs, oldest first, within ``max_posts`` and ``max_bytes`` of bodies.

    Adding a POST lets the oldest ones go until both limits hold again; the
    newest POST is always kept, even alone over the byte budget. ``let_go``
    and ``let_go_bytes`` count what was let go since the start (clearing is
    not letting go); ``received``, ``visitors_accepted`` and ``visitors_all``
    count what arrived since the last clear, kept or let go. A kept body
    costs up to about four times its size in memory once its JSON is parsed.
    Not thread-safe: callers hold a lock.

    Example::

        kept = RecentPosts(max_posts=2)
        for post in (first, second, third):
            kept.add(post)
        assert list(kept) == [second, third] and kept.let_go == 1
    """

    def __init__(
        self, max_posts: int = DEFAULT_MAX_POSTS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if isinstance(max_posts, bool) or not isinstance(max_posts, int) or max_posts < 1:
            raise ValueError(f"max_posts must be a whole number of at least 1, not {max_posts!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a whole number of at least 1, not {max_bytes!r}")
        self.max_posts = max_posts
        self.max_bytes = max_bytes
        self.bytes = 0
        self.let_go = 0
        self.let_go_bytes = 0
        self.received = 0
        self.visitors_accepted = 0
        self.visitors_all = 0
        self._posts: list[ReceivedPost] = []

    def __len__(self) -> int:
        return len(self._posts)

    def __iter__(self) -> Iterator[ReceivedPost]:
        return iter(self._posts)

    def add(self, post: ReceivedPost) -> int:
        """Keep ``post``; return how many older posts were let go to make room."""
        self._posts.append(post)
        self.bytes += len(post.body)
        self.received += 1
        self.visitors_all += len(post.visitors)
        if post.accepted:
            self.visitors_accepted += len(post.visitors)
        over = 0
        kept_bytes = self.bytes
        while len(self._posts) - over > 1 and (
            len(self._posts) - over > self.max_posts or kept_bytes > self.max_bytes
        ):
            kept_bytes -= len(self._posts[over].body)
            over += 1
        if over:
            del self._posts[:over]
            self.let_go += over
            self.let_go_bytes += self.bytes - kept_bytes
            self.bytes = kept_bytes
        return over

    def clear(self) -> None:
        """Forget every post (not counted as let go)."""
        self._posts.clear()
        self.bytes = self.received = self.visitors_accepted = self.visitors_all = 0

    def after(self, since: int) -> list[ReceivedPost]:
        """The posts whose id is greater than ``since``, oldest first."""
        start = len(self._posts)
        while start > 0 and self._posts[start - 1].id > since:  # ids only go up
            start -= 1
        return self._posts[start:]

    def by_id(self, post_id: int) -> ReceivedPost | None:
        """The kept post with this id, or ``None`` (cleared or let go)."""
        return next((p for p in self._posts if p.id == post_id), None)

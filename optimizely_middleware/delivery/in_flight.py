"""The POSTs under way: which events each one holds, from the moment an I/O thread takes them.

Usage (the engine holds its lock around every call; the book itself has none)::

    posts = PostsInFlight()
    post = posts.start(batch.first_seq, len(batch))  # an I/O thread took a batch
    posts.is_open(post)            # False once close() gave up on it
    if posts.settle(post): ...     # delivered or lost: counted here, the first time only
    posts.end(post)                # flush() no longer waits for it
    unconfirmed = posts.abandon()  # close(): the events of every POST still open

``events`` is what is in flight (``stats()["in_flight"]``). A settled POST
stays listed, holding no events, until it ends, so that ``flush()`` returns
only after its outcome (``on_error`` included) has been dealt with.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

__all__ = ["PostsInFlight"]


class PostsInFlight:
    """The engine's POSTs in progress (or waiting to retry), by id.

    Example::

        posts = PostsInFlight()
        post = posts.start(first_seq=7, events=3)
        assert posts.events == 3 and list(posts.oldest_seqs()) == [7]
        assert posts.settle(post) and not posts.settle(post)
        posts.end(post)
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._posts: dict[int, tuple[int, int]] = {}  # id -> (oldest seq, events)
        self.events = 0

    def __bool__(self) -> bool:
        return bool(self._posts)

    def start(self, first_seq: int, events: int) -> int:
        """A batch left the queue for a POST; returns the POST's id."""
        post = next(self._ids)
        self._posts[post] = (first_seq, events)
        self.events += events
        return post

    def is_open(self, post: int) -> bool:
        """Still listed: not ended, and not given up on by :meth:`abandon`."""
        return post in self._posts

    def settle(self, post: int) -> bool:
        """The POST's outcome is known: its events leave :attr:`events`. True the first
        time; False when :meth:`abandon` already counted them (or it ended)."""
        entry = self._posts.get(post)
        if entry is None or not entry[1]:  # gone, or settled already (a batch is never empty)
            return False
        first_seq, events = entry
        self._posts[post] = (first_seq, 0)
        self.events -= events
        return True

    def end(self, post: int) -> None:
        """Forget the POST (harmless if it is already gone)."""
        self._posts.pop(post, None)

    def abandon(self) -> int:
        """Give up on every POST still open (``close``): the events they hold."""
        unconfirmed = sum(events for _, events in self._posts.values())
        self._posts.clear()
        self.events = 0
        return unconfirmed

    def oldest_seqs(self) -> Iterator[int]:
        """The oldest seq of each POST still listed (``flush`` waits for them)."""
        return (first_seq for first_seq, _ in self._posts.values())

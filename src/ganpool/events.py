"""What the coordinator and the worker report as they go, for benchmarks that time them.

Both take an `on_event` callback, called as `on_event("claimed", version, unit_id)`; by
default it does nothing. A benchmark passes a `Timeline`, which stamps each event with the
wall clock (processes on one machine share it)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

OnEvent = Callable[..., None]


def ignore(*event: object) -> None:
    """The default: nobody is timing."""


class Timeline:
    """A bounded record of (time.time(), event, version[, unit_id]) tuples."""

    def __init__(self, maxlen: int = 100_000):
        self.events: deque[tuple] = deque(maxlen=maxlen)

    def __call__(self, *event: object) -> None:
        self.events.append((time.time(), *event))

    def __iter__(self) -> Iterator[tuple]:
        return iter(list(self.events))

    def __len__(self) -> int:
        return len(self.events)

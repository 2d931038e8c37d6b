"""How fast a run trains, measured one way wherever a person reads it: the coordinator's
line, `ganpool status`, the demo, the dashboard, and a worker's own line.

    images per second = images that entered a step in the last minute
                        / the seconds of that minute spent running

An image counts once per step: the alternating rule's G phase reuses its D phase's batch
and adds none; rejected results and spot-check twins add none either. A minute, not the
whole run: a class wants to see the speed now, after a student joins or leaves.
"""

from __future__ import annotations

import time
from collections import deque

from ganpool.store import Store
from ganpool.store.instructor import InstructorStore

WINDOW_S = 60.0


def images_per_s(images: float, seconds: float | None) -> float:
    """The one division: images over seconds, 0 before any time has passed."""
    return float(images) / float(seconds) if seconds and seconds > 0 else 0.0


def run_images_per_s(store: Store, run_id: int) -> float:
    """A run's speed, from what the database recorded (see the `run_throughput` query)."""
    measured = InstructorStore.of(store).run_throughput(run_id)
    return images_per_s(measured.images, measured.seconds) if measured else 0.0


class RecentImages:
    """The same measure kept in memory, for a process that sees its steps or units land."""

    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self.started = time.monotonic()
        self._events: deque[tuple[float, int]] = deque()

    def add(self, images: int, now: float | None = None) -> None:
        self._events.append((time.monotonic() if now is None else now, images))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._events and self._events[0][0] <= now - self.window_s:
            self._events.popleft()
        seconds = min(self.window_s, now - self.started)
        return images_per_s(sum(n for _, n in self._events), seconds)

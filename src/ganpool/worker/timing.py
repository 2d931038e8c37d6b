"""When the fetcher claims the next unit: shortly before the compute thread needs it.

Claiming too late leaves the compute idle; claiming too early has a busy worker sit on a
unit an idle one could be computing. So the fetcher waits until the compute thread has
nothing in hand, or will be done with its one unit within the time a claim and its download
take (never more than half a computation ahead)."""

from __future__ import annotations

import threading
import time
from collections import deque


class ClaimTiming:
    """What the compute thread tells the fetcher: units in hand, and when the current
    computation should end. Shared by the two threads (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # When the current computation should end (monotonic), None while compute is idle.
        self._busy_until: float | None = None
        # Units handed to the compute thread and not yet computed (0, 1 or 2).
        self._in_hand = 0
        self._recent_compute_s: deque[float] = deque([1.0], maxlen=4)
        self.prepare_s = 0.3  # how long claiming + downloading took, smoothed (fetcher only)

    def prepared(self, seconds: float) -> None:
        """The fetcher prepared a unit in `seconds` and hands it over."""
        self.prepare_s = 0.7 * self.prepare_s + 0.3 * seconds
        with self._lock:
            self._in_hand += 1

    def started(self) -> None:
        with self._lock:
            # The quickest recent unit: a claim too early costs little, one too late leaves
            # the compute idle (units slow down while uploads share the CPU).
            self._busy_until = time.monotonic() + min(self._recent_compute_s)

    def finished(self, seconds: float) -> None:
        with self._lock:
            self._busy_until = None
            self._in_hand -= 1
            self._recent_compute_s.append(seconds)

    def wait_for_turn(self, stopping: threading.Event, ahead: bool) -> None:
        """Return when the next claim is due (`ahead` False: only once compute is idle), or
        when the worker is stopping."""
        while not stopping.is_set():
            with self._lock:
                in_hand, until = self._in_hand, self._busy_until
                quickest = min(self._recent_compute_s)
            if in_hand == 0:
                return
            if in_hand == 1 and until is not None and ahead:
                # Lead by what preparing takes, but never by more than half a computation:
                # a quick worker does not hoard units that idle workers are about to claim.
                left = until - time.monotonic() - min(max(0.1, 2 * self.prepare_s), 0.5 * quickest)
                if left <= 0:
                    return
                time.sleep(min(left, 0.05))
                continue
            time.sleep(0.005)  # a unit waits to start, or is just starting or ending

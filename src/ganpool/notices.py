"""One line per change of state, however often the state is observed.

A worker polls every second while a run is paused; a lost database is retried by three
threads at once. A person wants to read "paused" once, and "running again" once.
"""

from __future__ import annotations

import logging
import threading


class Notice:
    """Logs `message` when the state it names begins, and `ended` (if any) when it ends."""

    def __init__(self, log: logging.Logger, level: int = logging.INFO):
        self.log, self.level = log, level
        self.state: str | None = None
        self._ended = ""
        self._lock = threading.Lock()

    def set(self, state: str, message: str, ended: str = "") -> bool:
        """Enter `state` (say `message` if it is new); returns whether it was new."""
        with self._lock:
            if state == self.state:
                return False
            self.state, self._ended = state, ended
        self.log.log(self.level, "%s", message)
        return True

    def clear(self, ended: str | None = None) -> None:
        """The state is over: say so once (`ended`, else what `set` was given), if anything."""
        with self._lock:
            if self.state is None:
                return
            self.state, ended = None, ended or self._ended
        if ended:
            self.log.log(self.level, "%s", ended)

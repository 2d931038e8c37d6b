"""The heartbeat thread: keeps the worker alive and the leases of the units it holds
extended, on a connection of its own (a lease runs on the server's clock)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ganpool.store.reconnect import CONNECTION_ERRORS, Outage
from ganpool.store.worker import WorkerStore

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(
        self,
        dsn: str,
        worker_id: int,
        interval: float,
        held: Callable[[], list[tuple[int, int]]],
        outage: Outage | None = None,
    ):
        super().__init__(daemon=True, name="ganpool-heartbeat")
        self.dsn, self.worker_id, self.interval = dsn, worker_id, interval
        self.outage = outage or Outage()
        self.held = held  # () -> [(unit_id, attempt), ...] held now
        self.lost = threading.Event()  # set once a held unit's lease was found lost
        self._stop = threading.Event()

    def run(self) -> None:
        store = None
        while not self._stop.wait(self.interval):
            try:
                store = store or WorkerStore.open(self.dsn)
                self._beat(store)
                self.outage.back()
            except Exception as e:  # a dropped connection: reconnect on the next beat
                self._failed(e)
                store = _close(store)
        _close(store)

    def _beat(self, store: WorkerStore) -> None:
        """One beat: for every unit held, or for the worker alone when it holds none."""
        for unit_id, attempt in self.held() or [(None, None)]:
            holds = store.heartbeat(self.worker_id, unit_id, attempt)
            if unit_id is not None and not holds:
                self.lost.set()

    def _failed(self, error: Exception) -> None:
        if isinstance(error, CONNECTION_ERRORS):
            self.outage.lost(error)
        else:
            log.warning("heartbeat failed: %s", error)

    def stop(self) -> None:
        self._stop.set()


def _close(store: WorkerStore | None) -> None:
    """Close a connection that may be gone already; None, for `store = _close(store)`."""
    if store is not None:
        store.close()

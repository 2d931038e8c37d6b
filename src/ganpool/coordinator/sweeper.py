"""Ending student sessions that hold locks too long, whatever timeouts they set themselves.

Student logins carry `idle_in_transaction_session_timeout` and `statement_timeout` (migration
0006), which end a stalled honest client. A student can `SET` them back in their own session,
so the coordinator also runs this sweeper: a thread with a connection of its own (so that it
still runs while a coordinator statement waits on the very locks it is there to free) that
every few seconds ends student sessions idle in a transaction, or in one statement, for too
long (`ganpool_end_stalled_sessions`, a definer function: no superuser needed).
"""

from __future__ import annotations

import logging
import threading

from ganpool.errors import NotAllowed
from ganpool.store.coordinator import CoordinatorStore
from ganpool.store.reconnect import CONNECTION_ERRORS

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0
IDLE_IN_TRANSACTION_S = 30.0  # a worker's own transactions last milliseconds
ONE_STATEMENT_S = 300.0  # a 25 MB upload over a slow link takes well under this


class StalledSessionSweeper(threading.Thread):
    def __init__(self, dsn: str):
        super().__init__(daemon=True, name="ganpool-sweeper")
        self.dsn = dsn
        # Read here, not at import: a test may lower them for a run of its own.
        self.every_s, self.idle_s, self.active_s = (
            SWEEP_EVERY_S,
            IDLE_IN_TRANSACTION_S,
            ONE_STATEMENT_S,
        )
        self.ended = 0  # sessions ended so far
        self._halt = threading.Event()

    def run(self) -> None:
        store = None
        try:
            while not self._halt.wait(self.every_s):
                try:
                    store = store or CoordinatorStore.open(self.dsn)
                    n = store.end_stalled_sessions(self.idle_s, self.active_s)
                except CONNECTION_ERRORS as e:  # the database is away: try again next time
                    log.debug("sweeper: %s", e)
                    if store is not None:
                        store.close()
                    store = None
                    continue
                except NotAllowed as e:  # e.g. a login that is not the class's instructor
                    log.warning("cannot end stalled student sessions: %s", e)
                    return
                if n:
                    self.ended += n
                    log.warning("ended %d stalled student session(s)", n)
        finally:
            if store is not None:
                store.close()

    def stop(self) -> None:
        self._halt.set()

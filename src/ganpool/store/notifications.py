"""Waking on NOTIFY: a connection of its own that LISTENs on one channel.

A notification is a hint, never a message: anyone may send one, and what it announces is
read from the tables afterwards. So a listener only answers "did anything arrive?", and a
backlog of notifications is one wake-up."""

from __future__ import annotations

from ganpool.store.connection import Store, connect


class Listener:
    """LISTENs through `channel_query` (a named query: `listen_results`, `listen_versions`)
    on a connection opened for it alone."""

    def __init__(self, dsn: str, channel_query: str):
        self._conn = connect(dsn)
        try:
            Store(self._conn).execute(channel_query)
        except BaseException:
            self._conn.close()
            raise

    def wait(self, timeout: float) -> bool:
        """Whether a notification arrived within `timeout` seconds."""
        return any(self._conn.notifies(timeout=timeout, stop_after=1))

    def drain(self) -> None:
        """Forget what queued meanwhile: however many arrived, they were one wake-up."""
        for _ in self._conn.notifies(timeout=0):
            pass

    def close(self) -> None:
        self._conn.close()

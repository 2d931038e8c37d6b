"""A few connections shared by a server's requests (the dashboard's): each request borrows
one as an `InstructorStore` and gives it back. Needs psycopg_pool (the `dashboard` extra)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row

from ganpool.errors import DatabaseUnavailable, NotAllowed
from ganpool.extras import require
from ganpool.store.connection import session_conninfo
from ganpool.store.instructor import InstructorStore

ConnectionPool = require("psycopg_pool", "dashboard", "the dashboard").ConnectionPool


class StorePool:
    """Between `min_size` and `max_size` connections to `dsn`, opened now."""

    def __init__(self, dsn: str, *, min_size: int, max_size: int):
        self._pool = ConnectionPool(
            session_conninfo(dsn),
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=True,
        )

    @contextmanager
    def store(self) -> Iterator[InstructorStore]:
        """A borrowed connection. What a request must answer for becomes a ganpool error:
        a refusal (a student's login reading the run) NotAllowed, an unreachable database
        DatabaseUnavailable."""
        try:
            with self._pool.connection() as conn:
                yield InstructorStore(conn)
        except psycopg.errors.InsufficientPrivilege as e:
            raise NotAllowed(str(e)) from None
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(str(e)) from None

    def close(self) -> None:
        self._pool.close()

"""Connections and the `Store`: one psycopg connection, queries called by name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Self

import psycopg
from psycopg.rows import dict_row

from ganpool.errors import DatabaseUnavailable, LoginRefused
from ganpool.store.queries import named_queries


def resolve_dsn(db: str | None) -> str:
    """--db, else GANPOOL_DB, else "" (libpq then reads PGHOST, PGUSER, ... itself)."""
    return db or os.environ.get("GANPOOL_DB", "")


def describe_target(dsn: str) -> str:
    """Where a connection string points, without its password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the database"
    host = info.get("host") or os.environ.get("PGHOST") or "local socket"
    return f"{info.get('dbname') or os.environ.get('PGDATABASE') or 'default'} on {host}"


# Every session the program opens finds ganpool's objects in their schema, and only there
# (pg_catalog is searched first anyway; `public` not at all).
SEARCH_PATH_OPTION = "-c search_path=ganpool"


def session_conninfo(dsn: str) -> str:
    """`dsn` with the session's search_path added to its options (kept: the caller's own
    options, from the DSN or PGOPTIONS). For psycopg_pool and anyone who connects himself."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    options = info.get("options") or os.environ.get("PGOPTIONS", "")
    info["options"] = f"{options} {SEARCH_PATH_OPTION}".strip()
    return psycopg.conninfo.make_conninfo(**info)


def connect(dsn: str, *, autocommit: bool = True, timeout: float = 10) -> psycopg.Connection:
    try:
        return psycopg.connect(
            session_conninfo(dsn),
            autocommit=autocommit,
            row_factory=dict_row,
            connect_timeout=int(timeout),
            application_name="ganpool",
        )
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        refused = ("password authentication failed", "not permitted to log in", 'FATAL:  role "')
        if any(r in first for r in refused):
            raise LoginRefused(
                f"{describe_target(dsn)} refused the login: {first} (check the password or "
                "join string; ask the instructor whether your access is still enabled)"
            ) from None
        if "does not exist" in first:
            hint = "check the database name, or ask the instructor for the right one"
        else:
            hint = "is the server running and reachable?"
        raise DatabaseUnavailable(
            f"cannot connect to {describe_target(dsn)}: {first} ({hint})"
        ) from None


class Store:
    """A connection plus the named queries. Callers own transactions (`with store.tx():`)."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self._queries = named_queries()

    @classmethod
    def of(cls, store: Store) -> Self:
        """`store`'s connection seen through these methods (any role's store will do)."""
        return store if isinstance(store, cls) else cls(store.conn)

    def close(self) -> None:
        self.conn.close()

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def broken(self) -> bool:
        return self.conn.broken

    def tx(self):
        return self.conn.transaction()

    def _sql(self, name: str) -> str:
        return self._queries[name]

    def execute(self, query: str, /, **params: Any) -> int:
        with self.conn.cursor() as cur:
            cur.execute(self._sql(query), params)
            return cur.rowcount

    def all(self, query: str, /, **params: Any) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(self._sql(query), params)
            return cur.fetchall()

    def one(self, query: str, /, **params: Any) -> dict[str, Any] | None:
        with self.conn.cursor() as cur:
            cur.execute(self._sql(query), params)
            return cur.fetchone()

    def blob(self, query: str, column: str, /, **params: Any) -> bytes | None:
        """Read one bytea value in binary format (no hex decoding)."""
        with self.conn.cursor(binary=True) as cur:
            cur.execute(self._sql(query), params)
            row = cur.fetchone()
        return None if row is None else row[column]

    def one_binary(self, query: str, /, **params: Any) -> dict[str, Any] | None:
        with self.conn.cursor(binary=True) as cur:
            cur.execute(self._sql(query), params)
            return cur.fetchone()

    def copy_in(
        self, query: str, /, types: list[str], row: tuple | None = None, rows: Iterable = ()
    ) -> None:
        """Send a row, or rows, through a binary COPY (streams a blob faster than a
        parameter)."""
        with self.conn.cursor() as cur, cur.copy(self._sql(query)) as copy:
            copy.set_types(types)
            for r in [row] if row is not None else rows:
                copy.write_row(r)

    def copy_out_blob(self, query: str, /, **params: Any) -> bytes | None:
        """The bytea values a `COPY (SELECT ...) TO STDOUT (FORMAT BINARY)` yields, joined in
        order (a payload comes in chunks), or None when there are none.
        (COPY takes no server-side parameters: psycopg binds these client-side.)"""
        with self.conn.cursor() as cur, cur.copy(self._sql(query), params) as copy:
            copy.set_types(["bytea"])
            parts = [row[0] for row in copy.rows()]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def execute_binary(self, query: str, /, **params: Any) -> dict[str, Any] | None:
        """Execute with parameters sent in binary: a blob goes over as raw bytes."""
        with self.conn.cursor(binary=True) as cur:
            cur.execute(self._sql(query), params, binary=True)
            return cur.fetchone() if cur.description else None

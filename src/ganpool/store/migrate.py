"""`ganpool db migrate`: apply the numbered migrations once each, under an advisory lock."""

from __future__ import annotations

import logging

import psycopg

from ganpool.errors import GanpoolError
from ganpool.store.queries import migrations, named_queries, sql_file

log = logging.getLogger(__name__)

# Newest migration this program knows; a database ahead of or behind it is refused.
SCHEMA_VERSION = max(n for n, _, _ in migrations())


def applied_versions(conn: psycopg.Connection) -> list[int]:
    q = named_queries()
    with conn.cursor() as cur:
        cur.execute(q["schema_present"])
        if not cur.fetchone()["present"]:
            return []
        cur.execute(q["applied_migrations"])
        return [r["version"] for r in cur.fetchall()]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply what is missing; returns the names applied (empty when up to date)."""
    done: list[str] = []
    q = named_queries()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(q["lock_migrations"])
        cur.execute(sql_file("bootstrap.sql"))
        have = set(applied_versions(conn))
        if have and max(have) > SCHEMA_VERSION:
            raise GanpoolError(
                f"the database schema (version {max(have)}) is newer than this ganpool "
                f"(version {SCHEMA_VERSION}): upgrade ganpool"
            )
        for number, name, sql in migrations():
            if number in have:
                continue
            log.info("applying migration %04d_%s", number, name)
            cur.execute(sql)
            cur.execute(q["record_migration"], {"version": number, "name": name})
            done.append(f"{number:04d}_{name}")
    return done


def check_schema(conn: psycopg.Connection) -> None:
    """Refuse to work on a database whose schema is not exactly this program's."""
    have = applied_versions(conn)
    current = max(have) if have else 0
    if current == SCHEMA_VERSION:
        return
    if current == 0:
        raise GanpoolError("the database has no ganpool schema: run `ganpool db migrate` first")
    if current < SCHEMA_VERSION:
        raise GanpoolError(
            f"the database schema (version {current}) is older than this ganpool "
            f"(version {SCHEMA_VERSION}): run `ganpool db migrate`"
        )
    raise GanpoolError(
        f"the database schema (version {current}) is newer than this ganpool "
        f"(version {SCHEMA_VERSION}): upgrade ganpool"
    )

"""`ganpool db migrate`: apply the numbered migrations once each, under a lock no student
can take.

From migration 0006 on, every ganpool object lives in the schema `ganpool`, owned by the
class's owner role. Each later migration runs with `search_path = ganpool`, so that its
unqualified names resolve there and its new objects land there; after it, every object in
the schema is handed to the owner role and closed to PUBLIC (`adopt_objects`). Migrations
0001-0005 ran in `public`, and 0006 moves what they made.

Migrations are append-only once applied. The ledger (`schema_migrations`, made by
`sql/bootstrap.sql` before any migration) keeps the sha256 of each applied migration's
file; `migrate` refuses to run when an applied migration's file has changed since, as
Flyway and sqitch do. A migration applied before checksums were kept gets its file's
checksum recorded at the next `migrate` (the baseline), and is checked from then on.
"""

from __future__ import annotations

import logging

import psycopg

from ganpool.errors import GanpoolError
from ganpool.store.queries import checksum, migrations, named_queries, sql_file

log = logging.getLogger(__name__)

# Newest migration this program knows; a database ahead of or behind it is refused.
SCHEMA_VERSION = max(n for n, _, _ in migrations())
OWN_SCHEMA = 6  # the migration that created the ganpool schema and moved everything there


def applied_versions(conn: psycopg.Connection) -> list[int]:
    q = named_queries()
    with conn.cursor() as cur:
        cur.execute(q["schema_present"])
        where = cur.fetchone()
        if where["in_ganpool"]:
            cur.execute(q["applied_migrations"])
        elif where["in_public"]:
            cur.execute(q["applied_migrations_in_public"])
        else:
            return []
        return [r["version"] for r in cur.fetchall()]


def migrate(conn: psycopg.Connection, class_key: str | None = None) -> list[str]:
    """Apply what is missing; returns the names applied (empty when up to date).
    `class_key` names the class's roles (ganpool_<key>_worker, ...) when 0006 creates them;
    by default it is derived from the database's name."""
    done: list[str] = []
    q = named_queries()
    with conn.transaction(), conn.cursor() as cur:
        # The ledger resolves in ganpool, or in public before 0006.
        cur.execute(q["set_search_path"], {"path": "ganpool, public"})
        cur.execute(q["lock_migrations"])
        if class_key:
            cur.execute(q["set_class_key"], {"key": class_key})
        cur.execute(sql_file("bootstrap.sql"))
        have = set(applied_versions(conn))
        if have and max(have) > SCHEMA_VERSION:
            raise GanpoolError(
                f"the database schema (version {max(have)}) is newer than this ganpool "
                f"(version {SCHEMA_VERSION}): upgrade ganpool"
            )
        _check_applied(cur)
        for number, name, sql in migrations():
            if number in have:
                continue
            log.info("applying migration %04d_%s", number, name)
            own = number >= OWN_SCHEMA
            cur.execute(q["set_search_path"], {"path": "ganpool" if own else "public"})
            cur.execute(sql)
            if own:
                cur.execute(q["adopt_objects"])
            cur.execute(q["set_search_path"], {"path": "ganpool, public"})
            cur.execute(
                q["record_migration"], {"version": number, "name": name, "checksum": checksum(sql)}
            )
            done.append(f"{number:04d}_{name}")
        cur.execute(q["secure_database"])
    return done


def _check_applied(cur: psycopg.Cursor) -> None:
    """Refuse an applied migration whose file has changed; record the baseline checksum of
    one applied before checksums were kept."""
    q = named_queries()
    files = {number: (name, checksum(sql)) for number, name, sql in migrations()}
    cur.execute(q["migration_checksums"])
    for row in cur.fetchall():
        name, now = files.get(row["version"], (row["name"], None))
        if now is None:  # newer than this program: refused by the version check
            continue
        if row["checksum"] is None:
            cur.execute(q["record_checksum"], {"version": row["version"], "checksum": now})
        elif row["checksum"] != now:
            raise GanpoolError(
                f"migration {row['version']:04d}_{name}.sql has changed since it was applied "
                "to this database: migrations are append-only, restore the file and add a "
                "new migration instead"
            )


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

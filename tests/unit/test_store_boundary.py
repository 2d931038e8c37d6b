"""Only the store knows the database (issue 12, step 2).

Outside `ganpool.store`, no module imports psycopg, touches a connection, calls the store's
untyped primitives or names a query: each role calls its typed store (`CoordinatorStore`,
`WorkerStore`, `InstructorStore`), so the database contract is written down once."""

import ast
from pathlib import Path

from ganpool.store.queries import named_queries

SRC = Path(__file__).resolve().parents[2] / "src" / "ganpool"
STORE = SRC / "store"
# The store's untyped calls: who calls them must know a query's name and its row's shape.
PRIMITIVES = {
    "execute",
    "all",
    "one",
    "blob",
    "one_binary",
    "copy_in",
    "copy_out_blob",
    "execute_binary",
}
# What only the store may hold: a connection, or the text of a query.
CONNECTION = {"conn", "pgconn", "_sql"}
# errors.py classifies what the database raised into one line for a person: it reads
# psycopg's exception classes, and never a connection.
MAY_IMPORT_PSYCOPG = {SRC / "errors.py"}


def _outside_store() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if STORE not in p.parents)


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    queries = set(named_queries())
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom) and path not in MAY_IMPORT_PSYCOPG:
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            modules.append(getattr(node, "module", None) or "")
            if any(m.split(".")[0] in ("psycopg", "psycopg_pool") for m in modules):
                found.append(f"{where} imports psycopg")
        if isinstance(node, ast.Attribute) and node.attr in CONNECTION:
            found.append(f"{where} uses .{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        texts = [a.value for a in node.args if isinstance(a, ast.Constant) and type(a.value) is str]
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        first = node.args[0] if node.args else None
        if method in PRIMITIVES and isinstance(first, ast.Constant) and type(first.value) is str:
            found.append(f"{where} calls .{method}({first.value!r})")
        found += [f"{where} passes the query name {t!r}" for t in texts if t in queries]
    return found


def test_no_module_outside_the_store_touches_the_database_directly():
    offences = [o for p in _outside_store() for o in _offences(p)]
    assert not offences, "\n".join(offences)


def test_the_check_sees_an_offence(tmp_path):
    """The scan finds what it looks for (a check that cannot fail is no check)."""
    planted = tmp_path / "probe.py"
    planted.write_text(
        "import psycopg\n\n"
        "def f(store, dsn):\n"
        '    Listener(dsn, "listen_versions")\n'
        "    store.conn.close()\n"
        '    return store.one("claim_unit")\n'
    )
    found = _offences(planted)
    assert any("imports psycopg" in o for o in found)
    assert any(".one('claim_unit')" in o for o in found)
    assert any("'listen_versions'" in o for o in found)
    assert any(".conn" in o for o in found)

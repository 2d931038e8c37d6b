"""Dead settings and constants do not come back (issue 12, step 5).

A setting nothing reads still lands in every run's stored config and in the docs; a constant
nothing uses says a rule holds that no code enforces. Uses are found in the source as text
(so SQL's `config ->> 'lease_s'` counts) and imports by parsing it."""

import ast
import dataclasses
import re
from pathlib import Path

from ganpool.settings import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "ganpool"
# RunConfig's own plumbing: reading a field there is not a use of it.
PLUMBING = {"__post_init__", "to_dict", "from_dict", "replace"}


def _code(skip: Path | None = None) -> str:
    files = [*SRC.rglob("*.py"), *SRC.rglob("*.sql"), *SRC.rglob("*.js"), *SRC.rglob("*.html")]
    # schema.sql is generated from the migrations: a use there is a use in a migration.
    return "\n".join(p.read_text() for p in files if p != skip and p.name != "schema.sql")


def _read(name: str, code: str) -> bool:
    return bool(re.search(rf"\.{name}\b|['\"]{name}['\"]", code))


def _fields_read_by_methods() -> dict[str, set[str]]:
    """For each RunConfig method or property: the fields it reads (`self.x`)."""
    tree = ast.parse((SRC / "settings.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RunConfig")
    return {
        f.name: {
            n.attr
            for n in ast.walk(f)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
        }
        for f in cls.body
        if isinstance(f, ast.FunctionDef) and f.name not in PLUMBING
    }


def test_every_run_setting_is_read_outside_settings_py():
    """Read outside settings.py, directly or through a RunConfig property that is."""
    code = _code(skip=SRC / "settings.py")
    read = {f.name for f in dataclasses.fields(RunConfig) if _read(f.name, code)}
    for method, fields in _fields_read_by_methods().items():
        if _read(method, code):
            read |= fields
    unread = [f.name for f in dataclasses.fields(RunConfig) if f.name not in read]
    assert not unread, f"RunConfig settings nothing reads (remove them, or use them): {unread}"


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts)


def _constants(tree: ast.Module) -> list[tuple[str, int]]:
    out = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        out += [
            (t.id, node.lineno)
            for t in targets
            if isinstance(t, ast.Name) and re.fullmatch(r"_?[A-Z][A-Z0-9_]*", t.id)
        ]
    return out


def _imported() -> set[tuple[str, str]]:
    """(module, name) of every `from module import name` in src/, tests/, benchmarks/, tools/."""
    found = set()
    for folder in ("src", "tests", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found |= {(node.module, a.name) for a in node.names}
    return found


def test_every_module_constant_is_used():
    """Used: named again in its own module, or imported from it (a same-named constant of
    another module does not count: that is how coordinator.py kept three dead copies)."""
    imported = _imported()
    unused = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for name, line in _constants(ast.parse(text)):
            if len(re.findall(rf"\b{name}\b", text)) < 2 and (
                (_module_name(path).removesuffix(".__init__"), name) not in imported
            ):
                unused.append(f"{path.relative_to(SRC)}:{line} {name}")
    assert not unused, f"module constants nothing uses (remove them): {unused}"

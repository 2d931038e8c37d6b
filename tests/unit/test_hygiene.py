"""Project-wide rules that a reviewer would otherwise have to check by hand."""

import re
import tomllib
from pathlib import Path
from urllib.parse import unquote

import psycopg

from ganpool.students import check_name, join_string

ROOT = Path(__file__).resolve().parents[2]
PY_FILES = [p for d in ("src", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]


def test_no_pickle_anywhere():
    pattern = re.compile(
        r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib)\b|pickle\.loads?\(|torch\.load\(", re.M
    )
    offenders = [
        f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
        for path in PY_FILES
        for m in pattern.finditer(path.read_text())
    ]
    assert not offenders, offenders


def test_no_sql_built_with_values_in_the_store():
    # The store's Python never formats SQL: every statement is a named query or migration.
    # (schema_dump.py writes the text of schema.sql, a file to read, never executed.)
    for path in (ROOT / "src/ganpool/store").glob("*.py"):
        if path.name == "schema_dump.py":
            continue
        text = path.read_text()
        assert not re.search(
            r"f[\"'](SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP)", text, re.I
        ), path
        assert ".format(" not in text and "% (" not in text, path


def test_join_strings_escape_every_part_and_pass_tls_options():
    password = "p@ss:w/rd?&=#% é"
    url = join_string(
        "ganpool_s_x",
        password,
        "db.example.edu",
        5433,
        "class db",
        sslmode="verify-full",
        sslrootcert="/home/s/ca root.pem",
    )
    info = psycopg.conninfo.conninfo_to_dict(url)
    assert unquote(info["password"]) == password or info["password"] == password
    assert info["host"] == "db.example.edu" and info["port"] == "5433"
    assert info["dbname"] == "class db"
    assert info["sslmode"] == "verify-full" and info["sslrootcert"] == "/home/s/ca root.pem"
    socket = join_string("r", "pw", "/tmp/x y", 5432, "d")
    assert psycopg.conninfo.conninfo_to_dict(socket)["host"] == "/tmp/x y"


def test_student_names_are_limited():
    assert check_name("alice-01") == "alice-01"
    for bad in ("", "Alice", "a" * 41, "x; DROP ROLE y", "-lead", "名前", "a\nb"):
        try:
            check_name(bad)
        except Exception as e:
            assert "invalid" in str(e)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_log_calls_in_mutated_modules_fit_on_the_line_mutation_testing_skips():
    """`[tool.mutmut] do_not_mutate_patterns` skips lines that start a log call; a call
    continued on the next lines would leave its arguments mutated (docs/testing.md)."""
    mutmut = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    patterns = [re.compile(p) for p in mutmut["do_not_mutate_patterns"]]
    # (In a mutation run's own folder, tools/mutation.py has written the module's files.)
    modules = mutmut.get("modules", {}).values()
    files = {f for module in modules for f in module["files"]} | set(mutmut.get("only_mutate", []))
    assert files
    split = []
    for name in sorted(files):
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            skipped = any(p.search(line) for p in patterns)
            if skipped and line.count("(") != line.count(")"):
                split.append(f"{name}:{number}: {line.strip()}")
    assert not split, split

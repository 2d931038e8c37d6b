"""Load the named queries of `sql/queries.sql`: with the migrations, the only place SQL lives."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def named_queries() -> dict[str, str]:
    return parse(resources.files("ganpool.store").joinpath("sql/queries.sql").read_text())


def sql_file(name: str) -> str:
    return resources.files("ganpool.store").joinpath("sql", name).read_text()


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) for every `sql/migrations/NNNN_name.sql`, in order."""
    folder = resources.files("ganpool.store").joinpath("sql/migrations")
    out = []
    for entry in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(out)

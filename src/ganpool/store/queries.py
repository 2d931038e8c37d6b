"""Load the named queries of `sql/queries.sql`: with the migrations, the only place SQL lives."""

from __future__ import annotations

import hashlib
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
    """(number, name, sql) for every `sql/migrations/NNNN_name.sql`, in order. The text is
    the file's bytes decoded as they are (no newline translation): `checksum(sql)` is the
    file's own sha256."""
    folder = resources.files("ganpool.store").joinpath("sql/migrations")
    out = []
    for entry in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_bytes().decode("utf-8")))
    return sorted(out)


def checksum(sql: str) -> str:
    """A migration's fingerprint in the ledger: the sha256 of its file, in hex."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()

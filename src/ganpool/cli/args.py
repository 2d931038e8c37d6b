"""From parsed arguments to what the library takes: run settings, a store, a file to write;
and the one way a figure is printed."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ganpool.errors import ConfigError


def parse_sets(items: list[str]) -> dict:
    """`--set key=value`, value read as a TOML value (numbers, booleans), else a string."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def run_config(args) -> object:
    from ganpool.settings import load_run_config

    overrides = parse_sets(args.set or [])
    if getattr(args, "steps", None) is not None:
        overrides["max_steps"] = args.steps
    return load_run_config(args.config, args.preset, overrides)


def open_store(args):
    """The instructor's store on --db (its schema checked), and the DSN it was opened with;
    main() closes it, whatever happens."""
    from ganpool.store.connection import resolve_dsn
    from ganpool.store.instructor import InstructorStore

    dsn = resolve_dsn(args.db)
    store = InstructorStore.open(dsn)
    args.stores.append(store)
    return dsn, store


def where(args) -> dict:
    """Where students (or viewers) connect from: the address in their join strings."""
    return {k: getattr(args, k) for k in ("host", "port", "sslmode", "sslrootcert")}


def check_new_file(path: Path, flag: str, force: bool = False) -> None:
    """Refuse, in one line, a file that cannot be written or would be lost by writing."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; name a file in it")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist")
    if path.exists() and not force:
        raise ConfigError(f"{flag} {path}: already exists (pass --force to replace it)")


def fmt(value: float | None, spec: str) -> str:
    """A figure, or a dash where a phase did not compute it (or it was not finite)."""
    if value is None:
        width = spec.lstrip("<>^").split(".")[0]
        return "–".rjust(int(width)) if width else "–"
    return format(value, spec)

"""`ganpool db migrate`: create or upgrade the schema."""

from __future__ import annotations

from ganpool.cli.parser import command, db_arg, group


def cmd_db_migrate(args) -> int:
    from ganpool.store.connection import resolve_dsn
    from ganpool.store.instructor import InstructorStore

    store = InstructorStore.open(resolve_dsn(args.db), check=False)
    args.stores.append(store)
    applied = store.migrate(class_key=args.class_key)
    roles = store.class_roles()
    store.close()
    print("applied " + ", ".join(applied) if applied else "schema is up to date")
    print(
        f"class {roles.key!r}: instructors {roles.instructor}, students "
        f"{roles.worker}, dashboards {roles.viewer} (for pg_hba.conf: +role)"
    )
    return 0


def register(sub) -> None:
    db = group(sub, "db", "database schema")
    m = command(db, "migrate", "create or upgrade the schema (idempotent)", cmd_db_migrate)
    db_arg(m)
    m.add_argument(
        "--class",
        dest="class_key",
        help="short name of this class's roles, ganpool_<class>_worker ... (first migration "
        "only; default: from the database's name)",
    )

"""The database layer: connections, migrations and named queries. All SQL lives in `sql/`."""

from ganpool.store.connection import Store, connect, describe_target, session_conninfo
from ganpool.store.migrate import SCHEMA_VERSION, check_schema, migrate

__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "check_schema",
    "connect",
    "describe_target",
    "migrate",
    "session_conninfo",
]

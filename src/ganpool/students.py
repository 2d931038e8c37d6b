"""Student logins: one PostgreSQL role per student, a member of the class's worker group
(`ganpool_<class>_worker`) only, named `ganpool_<class>_s_<name>`: two classes on one server
may both have an "alice".

The password is generated here, hashed to a SCRAM verifier by libpq on this machine, and
only the verifier reaches the server; the plaintext is shown once, inside the join string.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import quote, urlencode

import psycopg

from ganpool.errors import GanpoolError
from ganpool.store import Store

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise GanpoolError(
            f"student name {name[:60]!r} is invalid: use 1-40 lowercase letters, digits, - or _, "
            "starting with a letter or digit"
        )
    return name


def join_string(
    role: str,
    password: str,
    host: str,
    port: int | str,
    dbname: str,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
) -> str:
    """A libpq URL holding everything a worker needs, with every part escaped."""
    query = {k: v for k, v in (("sslmode", sslmode), ("sslrootcert", sslrootcert)) if v}
    if host.startswith("/"):  # a unix socket directory (a local demo or tests)
        query = {"host": host, "port": str(port), **query}
        netloc = ""
    else:
        netloc = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    user = f"{quote(role, safe='')}:{quote(password, safe='')}"
    url = f"postgresql://{user}@{netloc}/{quote(dbname, safe='')}"
    # quote_via=quote: libpq decodes %XX but not "+" as a space.
    return url + ("?" + urlencode(query, quote_via=quote, safe="") if query else "")


def add_student(
    store: Store,
    name: str,
    host: str | None = None,
    port: int | None = None,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
) -> str:
    check_name(name)
    role = store.one("student_role", name=name)["role_name"]
    password = secrets.token_urlsafe(24)  # 192 bits
    verifier = store.conn.pgconn.encrypt_password(
        password.encode(), role.encode(), b"scram-sha-256"
    ).decode()
    try:
        with store.tx():
            store.one("add_student", name=name, verifier=verifier)
    except psycopg.errors.UniqueViolation:
        raise GanpoolError(f"student {name!r} already exists") from None
    except psycopg.errors.DuplicateObject:
        raise GanpoolError(
            f"a login role {role!r} already exists on this server (another class?); "
            "choose another name"
        ) from None
    except psycopg.errors.InsufficientPrivilege:
        raise GanpoolError(
            "your login may not create roles: run `ganpool student add` as the instructor"
        ) from None
    info = store.conn.info
    return join_string(
        role, password, host or info.host, port or info.port, info.dbname, sslmode, sslrootcert
    )


def _student_call(store: Store, query: str, name: str) -> None:
    try:
        with store.tx():
            store.one(query, name=name)
    except psycopg.errors.NoDataFound:
        raise GanpoolError(
            f"there is no student named {name!r} (see `ganpool student list`)"
        ) from None


def disable_student(store: Store, name: str) -> int:
    """Refused from the student's next call on (checked in every worker function); the login
    is closed too, and their open sessions are ended (by a definer function of the class's
    owner role, so a non-superuser instructor can too). Returns the sessions ended."""
    _student_call(store, "disable_student", name)
    return store.one("end_student_sessions", name=name)["ended"]


def enable_student(store: Store, name: str) -> None:
    _student_call(store, "enable_student", name)


def remove_student(store: Store, name: str) -> None:
    _student_call(store, "remove_student", name)


def list_students(store: Store) -> list[dict]:
    return store.all("list_students")

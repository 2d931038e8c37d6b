"""Student logins: one PostgreSQL role per student, a member of the class's worker group
(`ganpool_<class>_worker`) only, named `ganpool_<class>_s_<name>`: two classes on one server
may both have an "alice".

The password is generated here, hashed to a SCRAM verifier by libpq on this machine, and
only the verifier reaches the server; the plaintext is shown once, inside the join string.
"""

from __future__ import annotations

import csv
import re
import secrets
from pathlib import Path
from urllib.parse import quote, urlencode

from ganpool.errors import AlreadyExists, GanpoolError, LoginExists, NotAllowed, NotFound
from ganpool.store import Store
from ganpool.store.instructor import InstructorStore, Student

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
    db = InstructorStore.of(store)
    role = db.student_role(name)
    password, verifier = _new_password(db, role)
    try:
        db.add_student(name, verifier)
    except AlreadyExists:
        raise GanpoolError(f"student {name!r} already exists") from None
    except LoginExists:
        raise GanpoolError(
            f"a login role {role!r} already exists on this server (another class?); "
            "choose another name"
        ) from None
    except NotAllowed:
        raise GanpoolError(
            "your login may not create roles: run `ganpool student add` as the instructor"
        ) from None
    where = {"host": host, "port": port, "sslmode": sslmode, "sslrootcert": sslrootcert}
    return _join_for(db, role, password, **where)


def _no_such_student(name: str) -> GanpoolError:
    return GanpoolError(f"there is no student named {name!r} (see `ganpool student list`)")


def disable_student(store: Store, name: str) -> int:
    """Refused from the student's next call on (checked in every worker function); the login
    is closed too, and their open sessions are ended (by a definer function of the class's
    owner role, so a non-superuser instructor can too). Returns the sessions ended."""
    try:
        return InstructorStore.of(store).disable_student(name)
    except NotFound:
        raise _no_such_student(name) from None


def enable_student(store: Store, name: str) -> None:
    try:
        InstructorStore.of(store).enable_student(name)
    except NotFound:
        raise _no_such_student(name) from None


def remove_student(store: Store, name: str) -> None:
    try:
        InstructorStore.of(store).remove_student(name)
    except NotFound:
        raise _no_such_student(name) from None


def list_students(store: Store) -> list[Student]:
    return InstructorStore.of(store).list_students()


# -- a class at a time, lost join strings, read-only logins ---------------------------------


def _new_password(db: InstructorStore, role: str) -> tuple[str, str]:
    """A fresh password and its SCRAM verifier, hashed here: only the verifier is sent."""
    password = secrets.token_urlsafe(24)  # 192 bits
    return password, db.scram_verifier(role, password)


def _join_for(db: InstructorStore, role: str, password: str, **where) -> str:
    """The join string of `role`: where it connects to defaults to this connection's."""
    here = db.target()
    return join_string(
        role,
        password,
        where.get("host") or here.host,
        where.get("port") or here.port,
        here.dbname,
        where.get("sslmode"),
        where.get("sslrootcert"),
    )


def read_roster(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A class list: one student name per line (blank lines and `#` comments skipped), or a
    CSV whose header has a `name` column (the other columns are kept, for a mail merge).
    Returns the CSV's columns ([] for a plain list) and one row per student."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GanpoolError(f"{path}: not a UTF-8 text file") from None
    lines = text.splitlines()
    header = next(csv.reader(lines[:1]), [])
    if "name" in (h.strip().lower() for h in header):
        reader = csv.DictReader(lines)
        key = next(h for h in reader.fieldnames if h.strip().lower() == "name")
        rows = [
            {k: (v or "").strip() for k, v in r.items() if k is not None} | {"name": r[key].strip()}
            for r in reader
            if (r.get(key) or "").strip()
        ]
        columns = list(reader.fieldnames) + (["name"] if key != "name" else [])
    else:
        rows = [{"name": s} for s in (line.strip() for line in lines) if s and s[0] != "#"]
        columns = []
    if not rows:
        raise GanpoolError(f"{path}: no student names in it")
    seen: set[str] = set()
    for i, r in enumerate(rows, 1):
        try:
            check_name(r["name"])
        except GanpoolError as e:
            raise GanpoolError(f"{path}, student {i}: {e}") from None
        if r["name"] in seen:
            raise GanpoolError(f"{path}: student {r['name']!r} is listed twice")
        seen.add(r["name"])
    return columns, rows


def add_roster(store: Store, rows: list[dict[str, str]], **where) -> list[str]:
    """Create every student of a roster, or none (roles are transactional in PostgreSQL);
    returns their join strings in the roster's order."""
    taken = {s.name for s in list_students(store)} & {r["name"] for r in rows}
    if taken:
        raise GanpoolError(
            f"already students: {', '.join(sorted(taken))}; nobody was added (take them off the "
            "roster, or `ganpool student reissue NAME` for a new join string)"
        )
    with InstructorStore.of(store).atomically():
        return [add_student(store, r["name"], **where) for r in rows]


def reissue_student(store: Store, name: str, **where) -> str:
    """A new password for a student who lost their join string: the old one stops working,
    their work and place on the leaderboard stay. Returns the new join string."""
    check_name(name)
    db = InstructorStore.of(store)
    role = db.student_role(name)
    password, verifier = _new_password(db, role)
    try:
        db.reissue_student(name, verifier)
    except NotFound:
        raise _no_such_student(name) from None
    except NotAllowed:
        raise GanpoolError("only the instructor can reissue join strings") from None
    return _join_for(db, role, password, **where)


def add_viewer(store: Store, name: str, **where) -> str:
    """A read-only login for the class's projector or an assistant: it can open the
    dashboard and `ganpool status`, and change nothing. Returns its connection URL."""
    check_name(name)
    db = InstructorStore.of(store)
    role = db.viewer_role(name)
    password, verifier = _new_password(db, role)
    try:
        db.add_viewer(name, verifier)
    except LoginExists:
        raise GanpoolError(f"a login {role!r} already exists on this server") from None
    except NotAllowed:
        raise GanpoolError(
            "your login may not create roles: run `ganpool viewer add` as the instructor"
        ) from None
    return _join_for(db, role, password, **where)


def remove_viewer(store: Store, name: str) -> None:
    try:
        InstructorStore.of(store).remove_viewer(name)
    except NotFound:
        raise GanpoolError(f"there is no viewer named {name!r}") from None

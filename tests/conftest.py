"""Real PostgreSQL servers for the tests: an embedded PostgreSQL 18 started for the session,
and the machine's PostgreSQL service (127.0.0.1:5432) where it is reachable. Each test gets a
fresh database copied from a template that was migrated once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.store import connect, migrate

SYSTEM_PG = os.environ.get(
    "GANPOOL_TEST_SYSTEM_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SERVERS = ["embedded", "system"]


def _with_db(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def drop_class_roles(admin_url: str, class_key: str) -> None:
    """Roles are cluster-wide: drop a test class's group roles once its databases are gone
    (the system server outlives the tests)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for group in ("instructor", "worker", "viewer", "owner"):
            conn.execute(f'DROP ROLE IF EXISTS "ganpool_{class_key}_{group}"')


class Server:
    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.template = f"ganpool_tmpl_{os.getpid()}"
        # Every test database is a copy of the template: one class, with roles of its own.
        self.class_key = f"t{uuid.uuid4().hex[:11]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.template}"')
            conn.execute(f'CREATE DATABASE "{self.template}"')
        with connect(_with_db(admin_url, self.template)) as conn:
            migrate(conn, class_key=self.class_key)

    def fresh_database(self) -> tuple[str, str]:
        name = f"ganpool_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name, _with_db(self.admin_url, name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.drop(self.template)
        drop_class_roles(self.admin_url, self.class_key)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[EmbeddedPostgres]:
    """PostgreSQL 18 that trusts its unix socket (the instructor, the tests) and asks every
    TCP login for a SCRAM password (the students)."""
    pg = EmbeddedPostgres(port=_free_port(), password_auth=True)
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="session")
def servers(embedded_server) -> Iterator[dict[str, Server | None]]:
    found: dict[str, Server | None] = {"embedded": Server(embedded_server.url())}
    try:
        found["system"] = Server(SYSTEM_PG)
    except psycopg.OperationalError:
        found["system"] = None
    yield found
    for s in found.values():
        if s is not None:
            s.close()


def _database(servers, which: str) -> Iterator[str]:
    server = servers[which]
    if server is None:
        pytest.skip(f"no PostgreSQL service at {SYSTEM_PG}")
    name, url = server.fresh_database()
    try:
        yield url
    finally:
        server.drop(name)


@pytest.fixture(params=SERVERS)
def db(request, servers) -> Iterator[str]:
    """A fresh, migrated database on each server: embedded PostgreSQL 18 and the service."""
    yield from _database(servers, request.param)


@pytest.fixture
def embedded_db(servers) -> Iterator[str]:
    """A fresh, migrated database on the embedded server only (for the slower tests)."""
    yield from _database(servers, "embedded")


@pytest.fixture
def empty_db(embedded_server) -> Iterator[str]:
    """A fresh database with no schema at all."""
    admin = embedded_server.url()
    name = f"ganpool_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# What a database test costs a mutation run beyond its own call: each mutant runs in a fresh
# process, whose first database test starts PostgreSQL and migrates a template.
DATABASE_START_S = 30.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """While mutmut records its statistics (MUTANT_UNDER_TEST=stats), charge each database
    test the server's start. mutmut runs a mutant's tests fastest first by the time of their
    calls alone, so a database test looked as cheap as a unit test and every mutant started
    PostgreSQL; this way the unit tests run first, and kill most mutants before it starts."""
    if (
        call.when == "call"
        and os.environ.get("MUTANT_UNDER_TEST") == "stats"
        and "embedded_server" in item.fixturenames
    ):
        call.duration += DATABASE_START_S
    yield

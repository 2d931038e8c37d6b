"""A schema and roles of the class's own: what the definer functions search, who owns them,
who may connect, create or make temporary objects, and two classes on one server."""

from __future__ import annotations

import contextlib
import uuid

import psycopg
import pytest

from ganpool.errors import GanpoolError, LoginRefused
from ganpool.store import Store, connect, migrate
from ganpool.store.submission import submission
from ganpool.students import add_student, disable_student, remove_student
from tests.conftest import _with_db, drop_class_roles
from tests.helpers import make_run

Denied = psycopg.errors.InsufficientPrivilege
SEARCH_PATH = "search_path=pg_catalog, ganpool, pg_temp"


def _join(instructor: Store, name: str, embedded_server, dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    if "host" in info and info["host"].startswith("/"):  # embedded: TCP with SCRAM
        return add_student(instructor, name, host="127.0.0.1", port=embedded_server.port)
    return add_student(instructor, name, host="127.0.0.1", port=5432)


def test_every_definer_function_searches_only_pg_catalog_ganpool_and_pg_temp(db):
    with connect(db) as conn:
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text AS f, n.nspname, p.proconfig, r.rolsuper, "
            "       r.rolcanlogin, r.rolname "
            "FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
            "JOIN pg_roles AS r ON r.oid = p.proowner "
            "WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        owner = Store(conn).one("class_roles")["owner"]
    assert len(rows) >= 10, rows
    wrong = [r["f"] for r in rows if r["proconfig"] != [SEARCH_PATH]]
    assert not wrong, f"definer functions with another search_path: {wrong}"
    assert {r["nspname"] for r in rows} == {"ganpool"}
    # They run as the class's owner: a NOLOGIN role that is not a superuser.
    assert {r["rolname"] for r in rows} == {owner}
    assert not any(r["rolsuper"] or r["rolcanlogin"] for r in rows)


def test_everything_lives_in_the_ganpool_schema_owned_by_the_owner_role(db):
    with connect(db) as conn:
        owner = Store(conn).one("class_roles")["owner"]
        public = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "UNION ALL SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        ).fetchall()
        assert public == []
        foreign = conn.execute(
            "SELECT c.relname FROM pg_class AS c WHERE c.relnamespace = 'ganpool'::regnamespace "
            "AND c.relkind IN ('r', 'v', 'S') AND pg_get_userbyid(c.relowner) <> %s "
            "UNION ALL SELECT proname FROM pg_proc WHERE pronamespace = 'ganpool'::regnamespace "
            "AND pg_get_userbyid(proowner) <> %s",
            (owner, owner),
        ).fetchall()
        assert foreign == []
        assert (
            conn.execute(
                "SELECT nspowner::regrole::text AS o FROM pg_namespace WHERE nspname = 'ganpool'"
            ).fetchone()["o"]
            == owner
        )
        # Nothing is open to PUBLIC.
        open_ = conn.execute(
            "SELECT p.proname FROM pg_proc AS p WHERE p.pronamespace = 'ganpool'::regnamespace "
            "AND has_function_privilege('public', p.oid, 'EXECUTE')"
        ).fetchall()
        assert open_ == []


@pytest.fixture
def student(db, servers, embedded_server):
    """A student of the test database's class logged in (SCRAM over TCP on the embedded
    server, the service's own rule on the other), with the database secured by `migrate`."""
    with connect(db) as conn:
        migrate(conn)  # a copy of the template: CONNECT and TEMP are re-secured here
    instructor = Store(connect(db))
    name = f"eve-{uuid.uuid4().hex[:8]}"
    join = _join(instructor, name, embedded_server, db)
    store = Store(connect(join))
    yield {"store": store, "instructor": instructor, "name": name, "join": join, "dsn": db}
    store.close()
    with contextlib.suppress(GanpoolError):
        remove_student(instructor, name)
    instructor.close()


def test_a_student_may_not_create_in_public_nor_make_temporary_objects(student):
    eve, instructor = student["store"], student["instructor"]
    # An older cluster (PostgreSQL 14 and before) let everyone create in public: migrate
    # takes that back, every time it runs.
    instructor.conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    migrate(instructor.conn)
    for sql in (
        "CREATE FUNCTION public.cardinality(integer[]) RETURNS integer LANGUAGE sql AS 'SELECT 1'",
        "CREATE TABLE public.t (x int)",
        "CREATE TEMP TABLE t (x int)",
        "CREATE SCHEMA mine",
        "CREATE TABLE ganpool.t (x int)",
        "CREATE FUNCTION ganpool.cardinality(integer[]) RETURNS integer LANGUAGE sql AS 'SELECT 1'",
    ):
        with pytest.raises(Denied):
            eve.conn.execute(sql)


def test_a_shadowing_function_in_public_is_never_called(student):
    """The attack of the issue: a `public.cardinality(integer[])` (a better match than
    pg_catalog's anyarray one) ran inside submit_begin. Put there by a superuser here, as a
    stand-in for a student on an old cluster: the functions never search public."""
    eve, instructor = student["store"], student["instructor"]
    instructor.conn.execute(
        "CREATE FUNCTION public.cardinality(integer[]) RETURNS integer LANGUAGE sql AS 'SELECT 999'"
    )
    try:
        run = make_run(student["dsn"], unit_size=10, results_per_step=2)
        from ganpool.coordinator import Coordinator

        coordinator = Coordinator(student["dsn"], run)
        coordinator.start()
        me = eve.one("register_worker", run_id=run.id, name="x", hostname="h", device="cpu")
        unit = eve.one("claim_unit", worker_id=me["worker_id"])
        assert eve.one("submit_begin", **submission(me["worker_id"], unit))["accepted"]
        samples = instructor.conn.execute("SELECT samples FROM results").fetchone()["samples"]
        assert samples == len(unit["indices"]) == 10
        coordinator.close()
    finally:
        instructor.conn.execute("DROP FUNCTION public.cardinality(integer[])")


def test_students_get_timeouts_keepalives_and_a_connection_limit(student):
    with connect(student["dsn"]) as conn:
        role = conn.execute("SELECT ganpool_student_role(%s) AS r", (student["name"],)).fetchone()
        row = conn.execute(
            "SELECT rolconnlimit, (SELECT setconfig FROM pg_db_role_setting "
            "WHERE setrole = r.oid AND setdatabase = 0) AS config FROM pg_roles AS r "
            "WHERE rolname = %s",
            (role["r"],),
        ).fetchone()
    assert row["rolconnlimit"] == 10
    config = dict(c.split("=", 1) for c in row["config"])
    assert config["idle_in_transaction_session_timeout"] == "30s"
    assert config["statement_timeout"] == "120s"
    assert config["tcp_keepalives_idle"] == "30"
    eve = student["store"]
    assert eve.conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == {
        "idle_in_transaction_session_timeout": "30s"
    }
    # PostgreSQL 16+: the instructors may use the connections reserved_connections keeps.
    with connect(student["dsn"]) as conn:
        if conn.info.server_version >= 160000:
            group = Store(conn).one("class_roles")["instructor"]
            reserved = conn.execute(
                "SELECT pg_has_role(%s, 'pg_use_reserved_connections', 'MEMBER') AS ok", (group,)
            ).fetchone()["ok"]
            assert reserved
    # The limit holds: the eleventh connection is refused, and the instructor still gets in.
    extra = [connect(student["join"]) for _ in range(9)]
    try:
        with pytest.raises(GanpoolError, match="too many connections"):
            connect(student["join"])
        connect(student["dsn"]).close()
    finally:
        for c in extra:
            c.close()


def _instructor_login(admin: Store, dsn: str) -> tuple[str, str]:
    """A non-superuser instructor: CREATEROLE, and a member of the class's instructor group."""
    name = f"teacher_{uuid.uuid4().hex[:8]}"
    group = admin.one("class_roles")["instructor"]
    admin.conn.execute(f"CREATE ROLE {name} LOGIN CREATEROLE PASSWORD 'teach' IN ROLE {group}")
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.update(user=name, password="teach")
    if info.get("host", "").startswith("/"):
        info["host"] = "127.0.0.1"
    return name, psycopg.conninfo.make_conninfo(**info)


def test_a_non_superuser_instructor_disables_and_removes_a_connected_student(db, embedded_server):
    admin = Store(connect(db))
    teacher, teacher_dsn = _instructor_login(admin, db)
    instructor = Store(connect(teacher_dsn))
    names = [f"s-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    sessions: list[Store] = []
    try:
        assert not instructor.conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()["rolsuper"]
        joins = [_join(instructor, n, embedded_server, db) for n in names]
        sessions += [Store(connect(j)) for j in joins]
        for s in sessions:  # open transactions too: a student's locks do not stop them
            s.conn.execute("BEGIN")
            s.conn.execute("SELECT 1 FROM runs")
        assert disable_student(instructor, names[0]) == 1
        with pytest.raises(psycopg.OperationalError):
            sessions[0].conn.execute("SELECT 1")
        with pytest.raises(LoginRefused, match="not permitted to log in"):
            connect(joins[0])
        remove_student(instructor, names[1])  # while connected, in a transaction
        with pytest.raises(psycopg.OperationalError):
            sessions[1].conn.execute("SELECT 1")
        with pytest.raises(LoginRefused):
            connect(joins[1])
        assert [r["name"] for r in instructor.all("list_students")] == [names[0]]
    finally:
        for s in sessions:
            s.close()
        with contextlib.suppress(GanpoolError):
            remove_student(instructor, names[0])
        instructor.close()
        admin.conn.execute(f"DROP ROLE IF EXISTS {teacher}")
        admin.close()


@pytest.fixture
def two_classes(request, servers, embedded_server):
    """Two class databases on one server, each migrated on its own (their own roles)."""
    server = servers[request.param]
    if server is None:
        pytest.skip("no PostgreSQL service")
    made = []
    for _ in range(2):
        dbname = f"ganpool_class_{uuid.uuid4().hex[:10]}"
        key = f"c{uuid.uuid4().hex[:11]}"
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        dsn = _with_db(server.admin_url, dbname)
        with connect(dsn) as conn:
            migrate(conn, class_key=key)
        made.append((dbname, dsn, key))
    yield [dsn for _, dsn, _ in made]
    for dbname, _, key in made:
        server.drop(dbname)
        drop_class_roles(server.admin_url, key)


@pytest.mark.parametrize("two_classes", ["embedded", "system"], indirect=True)
def test_two_classes_share_a_server_safely(two_classes, embedded_server):
    a_dsn, b_dsn = two_classes
    a, b = Store(connect(a_dsn)), Store(connect(b_dsn))
    ra, rb = a.one("class_roles"), b.one("class_roles")
    assert ra["worker"] != rb["worker"] and ra["instructor"] != rb["instructor"]
    run_b = make_run(b_dsn, "b")
    a_alice = _join(a, "alice", embedded_server, a_dsn)
    b_alice = _join(b, "alice", embedded_server, b_dsn)  # the same name in each class
    b_db = psycopg.conninfo.conninfo_to_dict(b_dsn)["dbname"]
    alice_in_b = psycopg.conninfo.conninfo_to_dict(a_alice)
    alice_in_b["dbname"] = b_db
    try:
        # A's student cannot even connect to B's database ...
        with pytest.raises(GanpoolError, match="permission denied for database"):
            connect(psycopg.conninfo.make_conninfo(**alice_in_b))
        # ... and were CONNECT opened to everyone, could still do nothing there.
        b.conn.execute(f'GRANT CONNECT ON DATABASE "{b_db}" TO PUBLIC')
        intruder = Store(connect(psycopg.conninfo.make_conninfo(**alice_in_b)))
        # (No USAGE on B's schema: its functions are not even found.)
        with pytest.raises(psycopg.errors.UndefinedFunction):
            intruder.one("register_worker", run_id=run_b.id, name="b", hostname="h", device="c")
        with pytest.raises(Denied):
            intruder.conn.execute("SELECT * FROM ganpool.runs")
        intruder.close()
        # B's own alice works in B, and B's instructor disables her without touching A's.
        mine = Store(connect(b_alice))
        assert mine.one("whoami")["name"] == "alice"
        mine.one("register_worker", run_id=run_b.id, name="x", hostname="h", device="c")
        assert disable_student(b, "alice") == 1
        mine.close()
        with pytest.raises(LoginRefused):
            connect(b_alice)
        theirs = Store(connect(a_alice))
        assert theirs.one("whoami")["name"] == "alice"
        theirs.close()
    finally:
        for store in (a, b):
            with contextlib.suppress(GanpoolError):
                remove_student(store, "alice")
            store.close()


def test_a_database_at_0005_with_students_upgrades_in_place(empty_db, embedded_server):
    """An existing class: schema 0005 in public, a student made the old way (a member of the
    cluster-wide ganpool_worker). After `migrate`, everything is in ganpool, the student is
    in the class's own group with its limits, and the old group holds nothing here."""
    from ganpool.store.queries import migrations, named_queries

    conn = connect(empty_db)
    key = f"u{uuid.uuid4().hex[:11]}"
    role = f"ganpool_s_old_{uuid.uuid4().hex[:8]}"
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL search_path = public")
            cur.execute(named_queries()["lock_migrations"])
            for number, name, sql in migrations()[:5]:
                if number == 1:
                    cur.execute(
                        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                        "name text NOT NULL, applied_at timestamptz DEFAULT now())"
                    )
                cur.execute(sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (number, name)
                )
            cur.execute("INSERT INTO students (name, role_name) VALUES ('old', %s)", (role,))
            cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' IN ROLE ganpool_worker")
        assert migrate(conn, class_key=key) == [
            f"{n:04d}_{name}" for n, name, _ in migrations()[5:]
        ]
        roles = Store(conn).one("class_roles")
        member = conn.execute(
            "SELECT pg_has_role(%s, %s, 'MEMBER') AS new, pg_has_role(%s, 'ganpool_worker', "
            "'MEMBER') AS old, (SELECT rolconnlimit FROM pg_roles WHERE rolname = %s) AS lim",
            (role, roles["worker"], role, role),
        ).fetchone()
        assert member == {"new": True, "old": False, "lim": 10}
        held = conn.execute(
            "SELECT count(*) AS n FROM information_schema.role_table_grants "
            "WHERE grantee IN ('ganpool_worker', 'ganpool_viewer', 'ganpool_instructor')"
        ).fetchone()["n"]
        assert held == 0
        assert conn.execute("SELECT count(*) AS n FROM ganpool.runs").fetchone()["n"] == 0
        run = make_run(empty_db)
        info = psycopg.conninfo.conninfo_to_dict(empty_db)
        info.update(host="127.0.0.1", port=str(embedded_server.port), user=role, password="pw")
        old = Store(connect(psycopg.conninfo.make_conninfo(**info)))
        assert old.one("whoami")["name"] == "old"
        old.one("register_worker", run_id=run.id, name="x", hostname="h", device="c")
        old.close()
    finally:
        conn.close()
        with psycopg.connect(embedded_server.url(), autocommit=True) as admin:
            dbname = psycopg.conninfo.conninfo_to_dict(empty_db)["dbname"]
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            admin.execute(f"DROP ROLE IF EXISTS {role}")
        drop_class_roles(embedded_server.url(), key)

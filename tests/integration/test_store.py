import psycopg
import pytest

from ganpool.errors import GanpoolError
from ganpool.store import SCHEMA_VERSION, Store, check_schema, connect, migrate
from ganpool.store.queries import migrations


def test_migrate_is_idempotent_and_recorded(empty_db):
    with connect(empty_db) as conn:
        with pytest.raises(GanpoolError, match="no ganpool schema"):
            check_schema(conn)
        assert migrate(conn) == [
            "0001_initial",
            "0002_worker_api",
            "0003_quality",
            "0004_dataset_images",
            "0005_performance",
            "0006_class_schema",
            "0007_class_tools",
            "0008_backup_units",
            "0009_one_caller_check_and_names",
            "0010_version_to_step",
            "0011_the_end_of_a_run_is_not_stale",
        ]
        assert migrate(conn) == []
        check_schema(conn)
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r["version"] for r in rows] == [n for n, _, _ in migrations()]
        assert rows[-1]["version"] == SCHEMA_VERSION


def test_schema_newer_or_older_than_the_program_is_refused(db):
    conn = connect(db)
    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'future')")
    with pytest.raises(GanpoolError, match="newer than this ganpool"):
        check_schema(conn)
    with pytest.raises(GanpoolError, match="upgrade ganpool"):
        migrate(conn)
    conn.execute("DELETE FROM schema_migrations WHERE version >= %s", (SCHEMA_VERSION,))
    with pytest.raises(GanpoolError, match="run `ganpool db migrate`"):
        check_schema(conn)
    conn.close()


def test_wrong_password_and_unreachable_server_are_one_line(db):
    with pytest.raises(GanpoolError) as e:
        connect("postgresql://nobody:wrong@127.0.0.1:1/x", timeout=2)
    assert "cannot connect to x on 127.0.0.1" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_unit_can_be_applied_only_once_whatever_the_code_does(db):
    from tests.helpers import make_run

    run = make_run(db)
    store = Store(connect(db))
    store.conn.execute(
        "INSERT INTO epochs (run_id, epoch, seed, size) VALUES (%s, 0, 1, 100)", (run.id,)
    )
    store.conn.execute(
        "INSERT INTO versions (run_id, version) VALUES (%s, 1), (%s, 2)", (run.id, run.id)
    )
    wid = store.one("register_worker", run_id=run.id, name="a", hostname="h", device="cpu")[
        "worker_id"
    ]
    unit = store.conn.execute(
        "INSERT INTO work_units (run_id, seq, version, epoch, indices, noise_seed) "
        "VALUES (%s, 0, 0, 0, '{1,2}', 5) RETURNING id",
        (run.id,),
    ).fetchone()["id"]
    result = store.conn.execute(
        "INSERT INTO results (run_id, unit_id, worker_id, version, samples) "
        "VALUES (%s, %s, %s, 0, 2) RETURNING id",
        (run.id, unit, wid),
    ).fetchone()["id"]
    store.execute("apply_result", run_id=run.id, version=1, result_id=result, weight=1.0)
    store.conn.execute("UPDATE results SET status = 'submitted' WHERE id = %s", (result,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        store.execute("apply_result", run_id=run.id, version=2, result_id=result, weight=1.0)
    store.close()

"""A live small run (coordinator and two workers in threads), a viewer login, and the
dashboard served by uvicorn on a free port — all stopped when the module is done."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import psycopg
import pytest
import uvicorn

from ganpool.coordinator import Coordinator
from ganpool.dashboard.app import create_app
from ganpool.store import Store, connect
from ganpool.worker import Worker
from tests.helpers import Threads, make_run

PASSWORD = "teach-me"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(servers, embedded_server):
    server = servers["embedded"]
    dbname, admin = server.fresh_database()
    run = make_run(
        admin, "live", unit_size=10, results_per_step=2, sample_every=3, max_steps=100000
    )
    viewer = f"viewer_{uuid.uuid4().hex[:8]}"
    with connect(admin) as conn:
        group = Store(conn).one("class_roles")["viewer"]
        conn.execute(f"CREATE ROLE {viewer} LOGIN PASSWORD 'look' IN ROLE {group}")
    viewer_url = f"postgresql://{viewer}:look@127.0.0.1:{embedded_server.port}/{dbname}"

    threads = Threads()
    coordinator = Coordinator(admin, run, poll_s=0.2)
    threads.start(coordinator.serve)
    for name in ("ada", "<b>grace</b>"):  # a name with markup must show as text
        threads.start(Worker(admin, run, name, device="cpu", poll_s=0.2).serve)

    port = _free_port()
    app = create_app(viewer_url, control_db=admin, instructor_password=PASSWORD)
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    web_thread = threading.Thread(target=web.run, daemon=True)
    web_thread.start()
    deadline = time.monotonic() + 20
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "run": run,
            "admin": admin,
            "app": app,
            "viewer_url": viewer_url,
        }
    finally:
        web.should_exit = True
        web_thread.join(10)
        with connect(admin) as conn:
            conn.execute("UPDATE runs SET status = 'stopped' WHERE id = %s", (run.id,))
            conn.execute("SELECT pg_notify('ganpool_version', 'stop')")
        threads.join(60)
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f"DROP ROLE IF EXISTS {viewer}")

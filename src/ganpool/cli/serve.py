"""`ganpool dashboard` and `ganpool demo`: the class's web page, and a whole class on one
machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ganpool.cli.args import open_store, parse_sets
from ganpool.cli.parser import command, db_arg, int_at_least
from ganpool.errors import GanpoolError


def cmd_dashboard(args) -> int:
    from ganpool.dashboard.app import create_app  # first: names the extra if one is missing
    from ganpool.store.connection import resolve_dsn

    _, store = open_store(args)  # fail early, in one line, on a bad connection or schema
    if not store.can_read_dashboard():
        raise GanpoolError(
            "this login cannot read the run (a student's login only trains): start the "
            "dashboard with the instructor's login or a viewer's (`ganpool viewer add`)"
        )
    store.close()
    password = os.environ.get("GANPOOL_DASHBOARD_PASSWORD") or None
    wheel = None
    if args.wheel:
        from ganpool.distribution import find_wheel

        wheel = find_wheel(Path(args.wheel))
    app = create_app(resolve_dsn(args.db), args.control_db, password, wheel=wheel)
    print(
        f"dashboard on http://{args.host}:{args.port}/ "
        f"({'instructor controls on' if password else 'read-only'})",
        flush=True,
    )
    if wheel:
        print(f"serving {wheel} to students at /wheel/{wheel.name}", flush=True)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_demo(args) -> int:
    from ganpool.local_demo.demo import run_demo
    from ganpool.settings import load_run_config

    settings = parse_sets(args.set or [])
    load_run_config(overrides=settings)  # a bad setting: one line, before a server starts
    summary = run_demo(args.workers, args.steps, Path(args.out), args.db, settings)
    print(json.dumps(summary, indent=2))
    return 0


def register_dashboard(sub) -> None:
    dash = command(sub, "dashboard", "serve the live web page for the class", cmd_dashboard)
    db_arg(dash)
    dash.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let students open it")
    dash.add_argument("--port", type=int_at_least(1, 65535), default=8000, help="TCP port")
    dash.add_argument(
        "--control-db",
        help="URL with instructor rights for the controls (default: --db); the controls "
        "also need $GANPOOL_DASHBOARD_PASSWORD, which the instructor types to log in",
    )
    dash.add_argument(
        "--wheel",
        default=os.environ.get("GANPOOL_WHEEL"),
        help="serve this wheel (or this version's wheel in this folder, e.g. dist/) to "
        "students at /wheel/ (default: $GANPOOL_WHEEL)",
    )


def register_demo(sub) -> None:
    d = command(sub, "demo", "coordinator + workers on an embedded PostgreSQL", cmd_demo)
    d.add_argument("--workers", type=int_at_least(1), default=2, help="worker processes")
    d.add_argument("--steps", type=int_at_least(1), default=600, help="training steps")
    d.add_argument("--out", default="demo-out", help="folder for samples, logs, summary.json")
    d.add_argument("--db", help="use this server instead of starting an embedded one")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")

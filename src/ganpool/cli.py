"""The `ganpool` command. Errors a user can cause end in one line and a non-zero exit;
`-v` shows the traceback and debug logs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import tomllib
from pathlib import Path

from ganpool.errors import ConfigError, GanpoolError

log = logging.getLogger("ganpool")


def _parse_sets(items: list[str]) -> dict:
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


def _config(args) -> object:
    from ganpool.settings import load_run_config

    overrides = _parse_sets(args.set or [])
    if getattr(args, "steps", None) is not None:
        overrides["max_steps"] = args.steps
    return load_run_config(args.config, args.preset, overrides)


def _store(args):
    from ganpool.store import Store, check_schema, connect
    from ganpool.store.connection import resolve_dsn

    dsn = resolve_dsn(args.db)
    store = Store(connect(dsn))
    check_schema(store.conn)
    return dsn, store


# -- commands ------------------------------------------------------------------------------


def cmd_db_migrate(args) -> int:
    from ganpool.store import connect, migrate
    from ganpool.store.connection import resolve_dsn

    conn = connect(resolve_dsn(args.db))
    applied = migrate(conn)
    conn.close()
    print("applied " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def cmd_run_create(args) -> int:
    from ganpool.data.datasets import open_dataset
    from ganpool.runs import create_run

    cfg = _config(args)
    dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, args.data)
    _, store = _store(args)
    run = create_run(store, args.run, cfg, dataset)
    print(f"created run {run.name!r} (id {run.id}) on {len(dataset)} images, {dataset.fingerprint}")
    return 0


def cmd_run_control(args) -> int:
    from ganpool.runs import find_run

    _, store = _store(args)
    run = find_run(store, args.run)
    status = {"pause": "paused", "resume": "running", "stop": "stopped"}[args.action]
    with store.tx():
        store.execute("set_run_status", run_id=run.id, status=status)
        store.execute("notify_run_status", run_id=run.id)
    print(f"run {run.name!r} is now {status}")
    return 0


def cmd_coordinator(args) -> int:
    import torch

    from ganpool.coordinator import Coordinator
    from ganpool.runs import find_run

    torch.set_num_threads(args.threads)
    dsn, store = _store(args)
    run = find_run(store, args.run)
    store.close()
    started = time.monotonic()
    images = 0

    vps = run.config.versions_per_step
    phase_label = {"both": "", "D": " (D phase)", "G": " (G phase)"}

    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    def on_step(r) -> None:
        nonlocal images
        phase = run.config.phase_of(r.version - 1)
        if phase != "G":  # a G phase reuses its D phase's images
            images += r.images
        rate = images / max(1e-9, time.monotonic() - started)
        print(
            f"step {r.version / vps:7.1f}{phase_label[phase]} | epoch {r.epochs:6.2f} | "
            f"{rate:7.1f} img/s | G {fmt(r.g_loss, '.3f')} D {fmt(r.d_loss, '.3f')} | "
            f"D(x) {fmt(r.d_real, '.2f')} D(G(z)) {fmt(r.d_fake, '.2f')} | "
            f"workers {r.workers} | {r.seconds * 1000:.0f} ms",
            flush=True,
        )

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    coordinator = Coordinator(dsn, run, out_dir=args.out, on_step=on_step, data_path=args.data)
    coordinator.serve()
    print(f"run {run.name!r} ended at version {coordinator.version}")
    return 0


def cmd_worker(args) -> int:
    import socket

    import torch

    from ganpool.runs import find_run
    from ganpool.worker import Worker

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.join:
        args.db = args.join
    dsn, store = _store(args)
    run = find_run(store, args.run)
    student = store.one("whoami")["name"]  # a student's name is their login's, always
    store.close()
    name = student or args.name or f"{os.environ.get('USER', 'student')}@{socket.gethostname()}"

    def on_unit(p) -> None:
        line = (
            f"[{name}] version {p.version} | units {p.units} | images {p.images} | "
            f"{p.images_per_s:.1f} img/s"
        )
        if p.place:
            line += f" | place {p.place} of {p.of_workers}"
        if p.rejected:
            line += f" | rejected {p.rejected}"
        print(line, flush=True)
        if p.last_message:
            print(f"[{name}] {p.last_message}", flush=True)

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    worker = Worker(
        dsn,
        run,
        name,
        data_path=args.data,
        device=args.device,
        on_unit=on_unit,
        max_units=args.max_units,
    )
    print(f"[{name}] joined run {run.name!r} on {worker.device.type}", flush=True)
    try:
        p = worker.serve()
    except KeyboardInterrupt:
        print(f"[{name}] interrupted: lease released, left the run", flush=True)
        return 130
    print(f"[{name}] done: {p.units} units, {p.images} images, {p.rejected} rejected", flush=True)
    return 0


def cmd_student(args) -> int:
    from ganpool import students

    _, store = _store(args)
    if args.student_command == "add":
        join = students.add_student(
            store, args.name, args.host, args.port, args.sslmode, args.sslrootcert
        )
        print(f"student {args.name!r} added. Give them this join string (shown only once):")
        print(f"\n  ganpool worker --join '{join}'\n")
    elif args.student_command == "list":
        rows = students.list_students(store)
        print(f"{'student':<24} {'state':<9} {'trust':>5} {'units':>6}  last seen")
        for r in rows:
            seen = r["last_seen"].strftime("%Y-%m-%d %H:%M:%S") if r["last_seen"] else "never"
            state = "disabled" if r["disabled"] else "enabled"
            print(f"{r['name']:<24} {state:<9} {r['trust']:>5.2f} {r['units_applied']:>6}  {seen}")
    else:
        action = {
            "disable": students.disable_student,
            "enable": students.enable_student,
            "remove": students.remove_student,
        }[args.student_command]
        action(store, args.name)
        print(f"student {args.name!r}: {args.student_command}d")
    return 0


def cmd_status(args) -> int:
    from ganpool.runs import find_run

    _, store = _store(args)
    run = find_run(store, args.run)
    s = store.one("run_summary", run_id=run.id)
    print(
        f"run {s['name']!r}: {s['status']}, "
        f"step {max(0, s['current_version']) // run.config.versions_per_step}, "
        f"epoch {s['epochs']:.2f}, {s['images_applied']} images applied, "
        f"{s['workers_online']} worker(s) online"
    )
    print(
        f"units applied {s['units_applied']}, rejected {s['units_rejected']}, "
        f"reissued {s['units_reissued']}, backup copies {s['units_copied']}, "
        f"quarantined {s['units_quarantined']}"
    )
    for u in store.all("quarantined_units", run_id=run.id, limit=20):
        bad = ", ".join(map(str, u["bad_images"] or [])) or "not named"
        print(f"quarantined unit {u['id']} (bad images: {bad}): {u['reason']}")
    board = store.all("leaderboard", run_id=run.id)
    if board:
        print(f"\n{'worker':<24} {'images':>8} {'units':>6} {'rejected':>8}")
        for row in board:
            print(f"{row['name']:<24} {row['images']:>8} {row['units']:>6} {row['rejected']:>8}")
    metrics = store.all("recent_metrics", run_id=run.id, limit=5)
    if metrics:
        print(f"\n{'step':>6} {'G loss':>8} {'D loss':>8} {'D(x)':>6} {'D(G(z))':>8}")
        for m in metrics:  # a phase of the alternating rule computes some losses only
            cell = {k: "-" if m[k] is None else f"{m[k]:.3f}" for k in ("g_loss", "d_loss")}
            cell |= {k: "-" if m[k] is None else f"{m[k]:.2f}" for k in ("d_real", "d_fake")}
            print(
                f"{m['step']:>6} {cell['g_loss']:>8} {cell['d_loss']:>8} {cell['d_real']:>6} "
                f"{cell['d_fake']:>8}"
            )
    return 0


def cmd_train_local(args) -> int:
    import torch

    from ganpool.data.datasets import open_dataset
    from ganpool.evaluation.grid import sample_grid
    from ganpool.protocol.schedule import sample_seed
    from ganpool.serialization.tensors import pack
    from ganpool.training.local import train_local

    torch.set_num_threads(args.threads)
    cfg = _config(args)
    if not cfg.max_steps:
        raise ConfigError("train-local needs a number of steps: pass --steps N")
    dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, args.data)
    out = Path(args.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    noise = torch.randn(64, cfg.nz, generator=torch.Generator().manual_seed(sample_seed(cfg.seed)))
    started = time.monotonic()

    def on_step(s, state) -> None:
        if s.step % cfg.sample_every == 0 or s.step == cfg.max_steps:
            (out / "samples" / f"step_{s.step:06d}.png").write_bytes(sample_grid(state.g, noise))
            rate = s.step * s.images / (time.monotonic() - started)
            print(
                f"step {s.step:5d} | epoch {s.epochs:6.2f} | {rate:7.1f} img/s | "
                f"G {s.g_loss:.3f} D {s.d_loss:.3f} | D(x) {s.d_real:.2f} D(G(z)) {s.d_fake:.2f}",
                flush=True,
            )

    state = train_local(cfg, dataset, cfg.max_steps, on_step)
    (out / "weights.safetensors").write_bytes(pack(state.weights()))
    print(f"wrote {out / 'weights.safetensors'}")
    return 0


def cmd_data_load(args) -> int:
    from ganpool.data.database import load_dataset
    from ganpool.data.datasets import open_dataset

    cfg = _config(args)
    dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, args.data)
    _, store = _store(args)
    done = load_dataset(store, dataset, cfg.image_size, cfg.channels)
    print(
        f"loaded {done['images']} images ({done['bytes'] / 2**20:.1f} MB) as "
        f'{done["fingerprint"]}; create the run with --set data_source="database"'
    )
    return 0


def cmd_data_download(args) -> int:
    from ganpool.data.hub import download_dataset

    path = download_dataset(args.repo, args.file, Path(args.out), args.sha256, args.revision)
    print(f"downloaded {path}" + (" (SHA-256 checked)" if args.sha256 else ""))
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from ganpool.data.datasets import check_fingerprint, open_dataset
    from ganpool.evaluation.quality import InceptionFeatures, generator_quality

    torch.set_num_threads(args.threads)
    features = InceptionFeatures()  # fail early, in one line, without the metrics extra
    store = None
    if args.model:
        from ganpool.export.model import load_generator

        g, model = load_generator(Path(args.model))
        kind = args.dataset or ("folder" if args.data else "faces")
        dataset = open_dataset(kind, model.image_size, model.channels, args.data)
        nz, label = model.nz, str(args.model)
    else:
        from ganpool.models.dcgan import build_models
        from ganpool.runs import find_run
        from ganpool.serialization.tensors import manifest_of, unpack
        from ganpool.training.state import load_weights, weights_of

        _, store = _store(args)
        run = find_run(store, args.run)
        cfg = run.config
        version = args.version
        if version is None:
            version = store.one("run_state", run_id=run.id)["current_version"]
        blob = store.blob("weights_at", "weights", run_id=run.id, version=version)
        if blob is None:
            raise GanpoolError(f"version {version} of run {run.name!r} is not kept")
        g, d = build_models(cfg.model, cfg.seed)
        load_weights(g, d, unpack(blob, manifest_of(weights_of(g, d))))
        dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, args.data)
        check_fingerprint(dataset, run.fingerprint, run.dataset_size)
        nz, label = cfg.nz, f"run {run.name!r} version {version}"
    n_real = min(len(dataset), args.real)
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n_real]
    real = dataset.batch(picks.tolist())
    q = generator_quality(g, real, nz, n_fake=args.n, seed=args.seed, features=features)
    print(
        f"{label}: KID {q.kid:.4f} ± {q.kid_std:.4f}, FID {q.fid:.1f} "
        f"({q.n_real} real and {q.n_fake} generated images)"
    )
    if store is not None:
        store.execute("insert_quality", run_id=run.id, version=version, **q.as_dict())
    return 0


def cmd_export(args) -> int:
    from ganpool.export.model import export_generator
    from ganpool.runs import find_run

    _, store = _store(args)
    run = find_run(store, args.run)
    out = export_generator(store, run, Path(args.out), args.version)
    print(f"wrote {out}/generator.safetensors, config.json, README.md and samples.png")
    if args.push:
        from ganpool.data.hub import push_model

        print(f"pushed: {push_model(out, args.push)}")
    return 0


def cmd_sample(args) -> int:
    import torch

    from ganpool.export.model import load_generator, sample_png

    if not 1 <= args.n <= 1024:
        raise ConfigError("--n must be between 1 and 1024")
    g, cfg = load_generator(Path(args.model))
    noise = torch.randn(args.n, cfg.nz, generator=torch.Generator().manual_seed(args.seed))
    Path(args.out).write_bytes(sample_png(g, noise))
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def cmd_dashboard(args) -> int:
    import uvicorn

    from ganpool.dashboard.app import create_app
    from ganpool.store.connection import resolve_dsn

    _, store = _store(args)  # fail early, in one line, on a bad connection or schema
    store.close()
    password = os.environ.get("GANPOOL_DASHBOARD_PASSWORD") or None
    app = create_app(resolve_dsn(args.db), args.control_db, password)
    print(
        f"dashboard on http://{args.host}:{args.port}/ "
        f"({'instructor controls on' if password else 'read-only'})",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_demo(args) -> int:
    from ganpool.local_demo.demo import run_demo

    summary = run_demo(workers=args.workers, steps=args.steps, out=Path(args.out), db=args.db)
    print(json.dumps(summary, indent=2))
    return 0


# -- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ganpool", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def db_arg(sp) -> None:
        sp.add_argument(
            "--db", help="PostgreSQL URL (else $GANPOOL_DB, else libpq's PG* variables)"
        )

    def run_arg(sp) -> None:
        sp.add_argument("--run", help="run name (default: the newest run)")

    def config_args(sp) -> None:
        sp.add_argument("--config", type=Path, help="TOML file with a [run] table")
        sp.add_argument("--preset", default="small", help="small (CPU, built-in faces) or dcgan64")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
        sp.add_argument("--data", type=Path, help="image folder, for the `folder` dataset")
        sp.add_argument("--steps", type=int, help="stop after this many steps (max_steps)")

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    m = db.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    db_arg(m)
    m.set_defaults(func=cmd_db_migrate)

    run = sub.add_parser("run", help="create and control runs").add_subparsers(
        dest="run_command", required=True
    )
    c = run.add_parser("create", help="create a run from a preset, a TOML file and --set")
    db_arg(c)
    c.add_argument("--run", default="default", help="name of the new run")
    config_args(c)
    c.set_defaults(func=cmd_run_create)
    for action in ("pause", "resume", "stop"):
        a = run.add_parser(action, help=f"{action} a run")
        db_arg(a)
        run_arg(a)
        a.set_defaults(func=cmd_run_control, action=action)

    co = sub.add_parser("coordinator", help="aggregate results and publish versions")
    db_arg(co)
    run_arg(co)
    co.add_argument("--out", type=Path, help="also write sample grids here")
    co.add_argument("--threads", type=int, default=1, help="torch threads")
    co.add_argument("--data", type=Path, help="the run's image folder, for quality_every")
    co.set_defaults(func=cmd_coordinator)

    w = sub.add_parser("worker", help="join a run and compute work units")
    db_arg(w)
    run_arg(w)
    w.add_argument("--join", help="the join string your instructor gave you")
    w.add_argument("--name", help="your name on the leaderboard (a student's is their login's)")
    w.add_argument("--data", type=Path, help="local copy of the run's image folder")
    w.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    w.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    w.add_argument("--max-units", type=int, default=0, help="leave after this many units")
    w.set_defaults(func=cmd_worker)

    st = sub.add_parser("student", help="student logins (instructor only)").add_subparsers(
        dest="student_command", required=True
    )
    a = st.add_parser("add", help="create a login and print its join string")
    a.add_argument("name")
    a.add_argument("--host", help="host students connect to (default: this connection's)")
    a.add_argument("--port", type=int, help="port students connect to")
    a.add_argument("--sslmode", help="e.g. verify-full (passed to the student's libpq)")
    a.add_argument("--sslrootcert", help="CA file path on the student's machine")
    db_arg(a)
    a.set_defaults(func=cmd_student)
    for action in ("list", "disable", "enable", "remove"):
        a = st.add_parser(action, help=f"{action} student logins")
        if action != "list":
            a.add_argument("name")
        db_arg(a)
        a.set_defaults(func=cmd_student)

    s = sub.add_parser("status", help="a run's progress, leaderboard and recent losses")
    db_arg(s)
    run_arg(s)
    s.set_defaults(func=cmd_status)

    t = sub.add_parser("train-local", help="the single-process reference trainer (no database)")
    config_args(t)
    t.add_argument("--out", default="train-local-out", help="folder for grids and weights")
    t.add_argument("--threads", type=int, default=2, help="torch threads")
    t.set_defaults(func=cmd_train_local)

    data = sub.add_parser("data", help="datasets in the database").add_subparsers(
        dest="data_command", required=True
    )
    dl = data.add_parser("load", help="store the run's images in the database, once")
    db_arg(dl)
    config_args(dl)
    dl.set_defaults(func=cmd_data_load)
    dd = data.add_parser("download", help="fetch a dataset file from the Hugging Face Hub")
    dd.add_argument("--repo", required=True, help="dataset repository, e.g. someone/celeba")
    dd.add_argument("--file", default="img_align_celeba.zip")
    dd.add_argument("--sha256", help="expected checksum of the file")
    dd.add_argument("--revision", help="a commit or tag, for a reproducible class")
    dd.add_argument("--out", default="data", help="folder to download into")
    dd.set_defaults(func=cmd_data_download)

    ev = sub.add_parser("evaluate", help="KID and FID of a run's generator or an exported one")
    db_arg(ev)
    run_arg(ev)
    ev.add_argument("--version", type=int, help="a kept version (default: the newest)")
    ev.add_argument("--model", help="an exported generator instead of a run")
    ev.add_argument("--dataset", choices=["faces", "folder"], help="with --model")
    ev.add_argument("--data", type=Path, help="image folder or zip of the dataset")
    ev.add_argument("--n", type=int, default=500, help="generated images")
    ev.add_argument("--real", type=int, default=10000, help="real images at most")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--threads", type=int, default=2)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="write the generator, its config, a model card and a grid")
    db_arg(ex)
    run_arg(ex)
    ex.add_argument("--version", type=int, help="a kept version (default: the newest)")
    ex.add_argument("--out", required=True, help="folder to write")
    ex.add_argument("--push", metavar="REPO", help="also upload to this Hugging Face model repo")
    ex.set_defaults(func=cmd_export)

    sa = sub.add_parser("sample", help="draw a grid of faces from an exported generator")
    sa.add_argument("--model", required=True, help="folder (or .safetensors) from `export`")
    sa.add_argument("--n", type=int, default=64)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", default="grid.png")
    sa.set_defaults(func=cmd_sample)

    dash = sub.add_parser("dashboard", help="serve the live web page for the class")
    db_arg(dash)
    dash.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let students open it")
    dash.add_argument("--port", type=int, default=8000)
    dash.add_argument(
        "--control-db",
        help="URL with instructor rights for the controls (default: --db); the controls "
        "also need $GANPOOL_DASHBOARD_PASSWORD, which the instructor types to log in",
    )
    dash.set_defaults(func=cmd_dashboard)

    d = sub.add_parser("demo", help="coordinator + workers on an embedded PostgreSQL")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--steps", type=int, default=600)
    d.add_argument("--out", default="demo-out")
    d.add_argument("--db", help="use this server instead of starting an embedded one")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return args.func(args)
    except GanpoolError as e:
        if args.verbose:
            raise
        print(f"ganpool: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ganpool: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        import psycopg

        if args.verbose or not isinstance(e, psycopg.Error):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, psycopg.errors.InsufficientPrivilege):
            print(f"ganpool: refused by the database: {first}", file=sys.stderr)
            return 2
        print(f"ganpool: database error: {first} (run with -v for details)", file=sys.stderr)
        return 3

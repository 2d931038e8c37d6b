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

from ganpool.errors import ConfigError, GanpoolError, explain

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
    args.stores.append(store)  # main() closes it, whatever happens
    check_schema(store.conn)
    return dsn, store


# -- commands ------------------------------------------------------------------------------


def cmd_db_migrate(args) -> int:
    from ganpool.store import Store, connect, migrate
    from ganpool.store.connection import resolve_dsn

    conn = connect(resolve_dsn(args.db))
    applied = migrate(conn, class_key=args.class_key)
    roles = Store(conn).one("class_roles")
    conn.close()
    print("applied " + ", ".join(applied) if applied else "schema is up to date")
    print(
        f"class {roles['key']!r}: instructors {roles['instructor']}, students "
        f"{roles['worker']}, dashboards {roles['viewer']} (for pg_hba.conf: +role)"
    )
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
    from ganpool.runs import control_run, find_run

    _, store = _store(args)
    run = find_run(store, args.run)
    print(f"run {run.name!r} is now {control_run(store, run, args.action)}")
    return 0


def cmd_run_list(args) -> int:
    from ganpool.runs import coordinator_alive, list_runs

    _, store = _store(args)
    rows = list_runs(store)
    if not rows:
        print("no runs yet: create one with `ganpool run create`")
        return 0
    print(f"{'run':<28} {'status':<9} {'steps':>13} {'images':>10}  coordinator  created")
    for r in rows:
        steps = f"{r['steps']}/{r['target']}" if r["target"] else str(r["steps"])
        alive = "running" if coordinator_alive(store, r["id"]) else "-"
        print(
            f"{r['name']:<28} {r['status']:<9} {steps:>13} {r['images_applied']:>10}  "
            f"{alive:<11}  {r['created_at']:%Y-%m-%d %H:%M}"
        )
    return 0


def cmd_run_delete(args) -> int:
    from ganpool.runs import delete_run, find_run

    _, store = _store(args)
    run = find_run(store, args.run)
    delete_run(store, run, force=args.force)
    print(f"deleted run {run.name!r} and everything recorded for it")
    return 0


def cmd_coordinator(args) -> int:
    import torch

    from ganpool.coordinator import Coordinator
    from ganpool.runs import find_run
    from ganpool.throughput import RecentImages

    torch.set_num_threads(args.threads)
    dsn, store = _store(args)
    run = find_run(store, args.run)
    store.close()
    recent = RecentImages()
    cfg = run.config
    phase_label = {"both": "", "D": " (D phase)", "G": ""}

    def on_step(r) -> None:
        phase = cfg.phase_of(r.version - 1)
        if phase != "G":  # a G phase reuses its D phase's images
            recent.add(r.images)
        # A D phase is the first half of the step it names; its G phase completes it.
        step = cfg.steps_of(r.version) + (1 if phase == "D" else 0)
        print(
            f"step {step:6d}{phase_label[phase]:<10} | epoch {r.epochs:6.2f} | "
            f"{recent.rate():7.1f} img/s | G {_fmt(r.g_loss, '.3f')} D {_fmt(r.d_loss, '.3f')} | "
            f"D(x) {_fmt(r.d_real, '.2f')} D(G(z)) {_fmt(r.d_fake, '.2f')} | "
            f"workers {r.workers} | {r.seconds * 1000:.0f} ms",
            flush=True,
        )

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    coordinator = Coordinator(dsn, run, out_dir=args.out, on_step=on_step, data_path=args.data)
    recent.started = time.monotonic()  # the run (re)starts now, as the database's clock says
    coordinator.serve()
    print(f"run {run.name!r} ended at step {cfg.steps_of(coordinator.version)}")
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

    cfg = run.config
    phase_label = {"both": "", "D": " (D phase)", "G": " (G phase)"}

    def on_unit(p) -> None:
        # A unit of version v works on the step after the steps_of(v) already done.
        step = cfg.steps_of(p.version) + 1
        line = (
            f"[{name}] step {step}{phase_label[cfg.phase_of(p.version)]} | units {p.units} | "
            f"images {p.images} | {p.images_per_s:.1f} img/s"
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

    if args.student_command == "add" and bool(args.name) == bool(args.roster):
        raise ConfigError("student add takes a NAME, or --roster FILE for a whole class")
    _, store = _store(args)
    wheel = None
    if args.student_command == "add" and args.wheel:
        from ganpool.distribution import find_wheel

        wheel = find_wheel(Path(args.wheel))  # before any login is created
    if args.student_command == "add" and args.roster:
        return _add_roster(args, store, wheel)
    if args.student_command == "reissue":
        join = students.reissue_student(store, args.name, **_where(args))
        print(f"student {args.name!r} has a new join string (the old one no longer works):")
        print(f"\n  ganpool worker --join '{join}'\n")
    elif args.student_command == "add":
        from ganpool.distribution import install_and_join

        join = students.add_student(
            store, args.name, args.host, args.port, args.sslmode, args.sslrootcert
        )
        print(f"student {args.name!r} added. Give them this command (shown only once):")
        print(f"\n  {install_and_join(join, args.install, wheel)}\n")
        if not args.install:
            print("(they install ganpool first: --install URL|PATH prints that step too)")
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
        ended = action(store, args.name)
        print(f"student {args.name!r}: {args.student_command}d")
        if args.student_command == "disable":
            print(f"  {ended} open session(s) ended")
    return 0


def _where(args) -> dict:
    """Where students (or viewers) connect from: the address in their join strings."""
    return {k: getattr(args, k) for k in ("host", "port", "sslmode", "sslrootcert")}


def _add_roster(args, store, wheel: Path | None) -> int:
    """A whole class from a roster: join strings, one per line, or the roster's CSV with
    `join` and `command` columns added (for a mail merge). Written with owner-only
    permissions: each line lets someone train as that student."""
    import csv
    import io

    from ganpool import students
    from ganpool.distribution import install_and_join

    columns, rows = students.read_roster(Path(args.roster))
    out = Path(args.out) if args.out else None
    if out is not None and (out.exists() or not out.parent.is_dir()):
        raise ConfigError(
            f"--out {out}: "
            + ("already exists" if out.exists() else "its folder does not exist")
            + " (join strings are secrets: ganpool never overwrites a file of them)"
        )
    joins = students.add_roster(store, rows, **_where(args))
    text = io.StringIO()
    if columns:
        writer = csv.DictWriter(text, fieldnames=[*columns, "join", "command"])
        writer.writeheader()
        for row, join in zip(rows, joins, strict=True):
            command = install_and_join(join, args.install, wheel)
            writer.writerow(row | {"join": join, "command": command})
    else:
        text.writelines(f"{r['name']}\t{join}\n" for r, join in zip(rows, joins, strict=True))
    if out is None:
        print(text.getvalue(), end="")
        return 0
    with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text.getvalue())
    print(f"added {len(rows)} students; their join strings are in {out} (keep it private)")
    return 0


def cmd_viewer(args) -> int:
    from ganpool import students

    _, store = _store(args)
    if args.viewer_command == "add":
        url = students.add_viewer(store, args.name, **_where(args))
        print(f"viewer {args.name!r} added: a read-only login for the projector (shown once):")
        print(f"\n  ganpool dashboard --db '{url}'\n")
    else:
        students.remove_viewer(store, args.name)
        print(f"viewer {args.name!r} removed")
    return 0


def cmd_metrics(args) -> int:
    from ganpool.export.metrics import metric_rows, write_csv, write_tensorboard
    from ganpool.runs import find_run

    if not args.csv and not args.tensorboard:
        raise ConfigError("say where to write: --csv FILE and/or --tensorboard FOLDER")
    if args.csv:
        _check_new_file(Path(args.csv), "--csv")
    _, store = _store(args)
    run = find_run(store, args.run)
    rows = metric_rows(store, run)
    if args.csv:
        write_csv(rows, Path(args.csv))
        print(f"wrote {len(rows)} steps to {args.csv}")
    if args.tensorboard:
        logdir = write_tensorboard(rows, Path(args.tensorboard), run.name)
        print(f"wrote {len(rows)} steps to {logdir} (tensorboard --logdir {args.tensorboard})")
    return 0


def _check_new_file(path: Path, flag: str, force: bool = False) -> None:
    """Refuse, in one line, a file that cannot be written or would be lost by writing."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; name a file in it")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist")
    if path.exists() and not force:
        raise ConfigError(f"{flag} {path}: already exists (pass --force to replace it)")


def cmd_status(args) -> int:
    from ganpool.runs import coordinator_alive, find_run
    from ganpool.throughput import run_images_per_s

    _, store = _store(args)
    run = find_run(store, args.run)
    cfg = run.config
    s = store.one("run_summary", run_id=run.id)
    target = f"/{cfg.max_steps}" if cfg.max_steps else ""
    print(
        f"run {s['name']!r}: {s['status']}, step {cfg.steps_of(s['current_version'])}{target}, "
        f"epoch {s['epochs']:.2f}, {s['images_applied']} images applied, "
        f"{run_images_per_s(store, run.id):.1f} img/s, {s['workers_online']} worker(s) online, "
        f"coordinator {'running' if coordinator_alive(store, run.id) else 'not running'}"
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
    metrics = store.all("recent_metrics", run_id=run.id, limit=5, per_step=cfg.versions_per_step)
    if metrics:
        print(f"\n{'step':>6} {'G loss':>8} {'D loss':>8} {'D(x)':>6} {'D(G(z))':>8}")
        for m in metrics:  # a phase of the alternating rule computes some losses only
            print(
                f"{m['step']:>6} {_fmt(m['g_loss'], '>8.3f')} {_fmt(m['d_loss'], '>8.3f')} "
                f"{_fmt(m['d_real'], '>6.2f')} {_fmt(m['d_fake'], '>8.2f')}"
            )
    return 0


def _fmt(value: float | None, spec: str) -> str:
    """A figure, or a dash where a phase did not compute it (or it was not finite)."""
    if value is None:
        width = spec.lstrip("<>^").split(".")[0]
        return "–".rjust(int(width)) if width else "–"
    return format(value, spec)


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
    if args.model is None and args.dataset is not None:
        raise ConfigError("--dataset goes with --model (a run knows its own dataset)")
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
            if version < 0:
                raise GanpoolError(f"run {run.name!r} has no published weights yet")
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

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; name a folder to write the model into")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")
    _, store = _store(args)
    run = find_run(store, args.run)
    out = export_generator(store, run, out, args.version)
    print(f"wrote {out}/generator.safetensors, config.json, README.md and samples.png")
    if args.push:
        from ganpool.data.hub import push_model

        print(f"pushed: {push_model(out, args.push)}")
    return 0


def cmd_sample(args) -> int:
    import torch

    from ganpool.export.model import load_generator, sample_png

    _check_new_file(Path(args.out), "--out", force=args.force)
    g, cfg = load_generator(Path(args.model))
    noise = torch.randn(args.n, cfg.nz, generator=torch.Generator().manual_seed(args.seed))
    Path(args.out).write_bytes(sample_png(g, noise))
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def cmd_dashboard(args) -> int:
    from ganpool.dashboard.app import create_app  # first: names the extra if one is missing
    from ganpool.store.connection import resolve_dsn

    _, store = _store(args)  # fail early, in one line, on a bad connection or schema
    if not store.one("can_read_dashboard")["readable"]:
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

    settings = _parse_sets(args.set or [])
    load_run_config(overrides=settings)  # a bad setting: one line, before a server starts
    summary = run_demo(args.workers, args.steps, Path(args.out), args.db, settings)
    print(json.dumps(summary, indent=2))
    return 0


# -- argument parsing ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """A usage error is one line too, with where to look for help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each default worth reading (not an absent value, not an unset flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _int_at_least(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value

    return parse


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ganpool")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from ganpool import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    # -v is accepted before or after any subcommand: every parser knows it, and only the
    # top one sets its default (SUPPRESS keeps a subparser from resetting it to False).
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="debug logs, and the traceback of an error",
    )  # fmt: skip
    common = {"formatter_class": _HelpFormatter, "parents": [verbose]}
    p = _Parser(prog="ganpool", description=__doc__.split("\n")[0], formatter_class=_HelpFormatter)
    # Its own -v, not the parent's: parsers share a parent's actions, defaults included.
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs, and tracebacks")
    p.add_argument("--version", action="version", version=f"ganpool {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, help: str, func=None, **defaults) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help, **common)
        if func is not None:
            sp.set_defaults(func=func, **defaults)
        return sp

    def group(parent, name: str, help: str):
        return command(parent, name, help).add_subparsers(
            dest=f"{name}_command", required=True, metavar="COMMAND"
        )

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
        sp.add_argument(
            "--steps", type=_int_at_least(1), help="stop after this many steps (max_steps)"
        )

    db = group(sub, "db", "database schema")
    m = command(db, "migrate", "create or upgrade the schema (idempotent)", cmd_db_migrate)
    db_arg(m)
    m.add_argument(
        "--class",
        dest="class_key",
        help="short name of this class's roles, ganpool_<class>_worker ... (first migration "
        "only; default: from the database's name)",
    )

    def where_args(sp) -> None:
        sp.add_argument("--host", help="host they connect to (default: this connection's)")
        sp.add_argument("--port", type=_int_at_least(1, 65535), help="port they connect to")
        sp.add_argument("--sslmode", help="e.g. verify-full (passed to their libpq)")
        sp.add_argument("--sslrootcert", help="CA file path on their machine")

    def threads_arg(sp, default: int, low: int = 1, note: str = "") -> None:
        sp.add_argument(
            "--threads", type=_int_at_least(low), default=default, help="torch threads" + note
        )

    run = group(sub, "run", "create, list, control and delete runs")
    c = command(run, "create", "create a run from a preset, a TOML file and --set", cmd_run_create)
    db_arg(c)
    c.add_argument("--run", default="default", help="name of the new run")
    config_args(c)
    db_arg(command(run, "list", "every run: status, steps, coordinator", cmd_run_list))
    for action, what in (
        ("pause", "pause a running run (workers wait)"),
        ("resume", "resume a paused run"),
        ("stop", "stop a run for good"),
    ):
        a = command(run, action, what, cmd_run_control, action=action)
        db_arg(a)
        run_arg(a)
    rd = command(run, "delete", "delete a run and everything recorded for it", cmd_run_delete)
    db_arg(rd)
    rd.add_argument("--run", required=True, help="the run to delete (never implied)")
    rd.add_argument("--force", action="store_true", help="even a running run")

    co = command(sub, "coordinator", "aggregate results and publish versions", cmd_coordinator)
    db_arg(co)
    run_arg(co)
    co.add_argument("--out", type=Path, help="also write sample grids here")
    threads_arg(co, 1)
    co.add_argument("--data", type=Path, help="the run's image folder, for quality_every")

    w = command(sub, "worker", "join a run and compute work units", cmd_worker)
    db_arg(w)
    run_arg(w)
    w.add_argument("--join", help="the join string your instructor gave you")
    w.add_argument("--name", help="your name on the leaderboard (a student's is their login's)")
    w.add_argument("--data", type=Path, help="local copy of the run's image folder")
    w.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
        help="where to compute (auto: a GPU if there is one)",
    )  # fmt: skip
    threads_arg(w, 0, low=0, note=" (0: torch's default)")
    w.add_argument(
        "--max-units", type=_int_at_least(0), default=0, help="leave after this many (0: never)"
    )

    st = group(sub, "student", "student logins (instructor only)")
    a = command(st, "add", "create a login and print its join string", cmd_student)
    a.add_argument("name", nargs="?", help="the student's name (or use --roster)")
    a.add_argument(
        "--roster", metavar="FILE", help="a whole class: one name per line, or a CSV with a "
        "`name` column (kept, with `join` and `command` added, for a mail merge)",
    )  # fmt: skip
    a.add_argument("--out", metavar="FILE", help="with --roster: write the join strings here")
    where_args(a)
    a.add_argument(
        "--install",
        default=os.environ.get("GANPOOL_INSTALL"),
        metavar="SOURCE",
        help="where students pip-install ganpool from: the dashboard's address (it serves "
        "the wheel), a wheel's URL or path, or a git URL (default: $GANPOOL_INSTALL)",
    )
    a.add_argument(
        "--wheel",
        default=os.environ.get("GANPOOL_WHEEL"),
        help="the wheel the dashboard serves (a file, or a folder like dist/): its SHA-256 "
        "goes into the install command, for pip to check (default: $GANPOOL_WHEEL)",
    )
    db_arg(a)
    r = command(st, "reissue", "a new join string for a student who lost theirs", cmd_student)
    r.add_argument("name")
    where_args(r)
    db_arg(r)
    for action in ("list", "disable", "enable", "remove"):
        a = command(st, action, f"{action} student logins", cmd_student)
        if action != "list":
            a.add_argument("name")
        db_arg(a)

    vw = group(sub, "viewer", "read-only logins, for a projector or an assistant")
    va = command(vw, "add", "create a read-only login and print its URL", cmd_viewer)
    va.add_argument("name")
    where_args(va)
    db_arg(va)
    vr = command(vw, "remove", "drop a read-only login", cmd_viewer)
    vr.add_argument("name")
    db_arg(vr)

    s = command(sub, "status", "a run's progress, leaderboard and recent losses", cmd_status)
    db_arg(s)
    run_arg(s)

    me = command(sub, "metrics", "export a run's curves as CSV or TensorBoard files", cmd_metrics)
    db_arg(me)
    run_arg(me)
    me.add_argument("--csv", metavar="FILE", help="write one row per step here")
    me.add_argument(
        "--tensorboard", metavar="FOLDER", help="write event files under FOLDER/RUN "
        "(needs the tensorboard extra)",
    )  # fmt: skip

    t = command(sub, "train-local", "the single-process reference trainer (no database)",
                cmd_train_local)  # fmt: skip
    config_args(t)
    t.add_argument("--out", default="train-local-out", help="folder for grids and weights")
    threads_arg(t, 2)

    data = group(sub, "data", "datasets in the database")
    dl = command(data, "load", "store the run's images in the database, once", cmd_data_load)
    db_arg(dl)
    config_args(dl)
    dd = command(data, "download", "fetch a dataset file from the Hugging Face Hub",
                 cmd_data_download)  # fmt: skip
    dd.add_argument("--repo", required=True, help="dataset repository, e.g. someone/celeba")
    dd.add_argument("--file", default="img_align_celeba.zip", help="file in the repository")
    dd.add_argument("--sha256", help="expected checksum of the file")
    dd.add_argument("--revision", help="a commit or tag, for a reproducible class")
    dd.add_argument("--out", default="data", help="folder to download into")

    ev = command(sub, "evaluate", "KID and FID of a run's generator or an exported one",
                 cmd_evaluate)  # fmt: skip
    db_arg(ev)
    run_arg(ev)
    ev.add_argument("--version", type=_int_at_least(0), help="a kept version (default: newest)")
    ev.add_argument("--model", help="an exported generator instead of a run")
    ev.add_argument("--dataset", choices=["faces", "folder"], help="with --model")
    ev.add_argument("--data", type=Path, help="image folder or zip of the dataset")
    # KID and FID compare two sets' statistics: fewer than two images have none.
    ev.add_argument("--n", type=_int_at_least(2), default=500, help="generated images")
    ev.add_argument("--real", type=_int_at_least(2), default=10000, help="real images at most")
    ev.add_argument("--seed", type=int, default=0, help="noise seed of the generated images")
    threads_arg(ev, 2)

    ex = command(sub, "export", "write the generator, its config, a model card and a grid",
                 cmd_export)  # fmt: skip
    db_arg(ex)
    run_arg(ex)
    ex.add_argument("--version", type=_int_at_least(0), help="a kept version (default: newest)")
    ex.add_argument("--out", required=True, help="folder to write")
    ex.add_argument("--push", metavar="REPO", help="also upload to this Hugging Face model repo")

    sa = command(sub, "sample", "draw a grid of faces from an exported generator", cmd_sample)
    sa.add_argument("--model", required=True, help="folder (or .safetensors) from `export`")
    sa.add_argument("--n", type=_int_at_least(1, 1024), default=64, help="faces in the grid")
    sa.add_argument("--seed", type=int, default=0, help="noise seed: the same seed, the same faces")
    sa.add_argument("--out", default="grid.png", help="PNG file to write")
    sa.add_argument("--force", action="store_true", help="replace --out if it exists")

    dash = command(sub, "dashboard", "serve the live web page for the class", cmd_dashboard)
    db_arg(dash)
    dash.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let students open it")
    dash.add_argument("--port", type=_int_at_least(1, 65535), default=8000, help="TCP port")
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

    d = command(sub, "demo", "coordinator + workers on an embedded PostgreSQL", cmd_demo)
    d.add_argument("--workers", type=_int_at_least(1), default=2, help="worker processes")
    d.add_argument("--steps", type=_int_at_least(1), default=600, help="training steps")
    d.add_argument("--out", default="demo-out", help="folder for samples, logs, summary.json")
    d.add_argument("--db", help="use this server instead of starting an embedded one")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    return p


def _setup_logging(verbose: bool) -> None:
    """Library modules log; the CLI shows their one-line news (a wait, a lost or regained
    database) at INFO, and everything, with module names, under -v."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ganpool").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.stores = []  # connections a command opened through _store()
    _setup_logging(args.verbose)
    # The one place errors become a line: whatever a command raises, the person reads one
    # line saying what went wrong and gets a non-zero status; -v shows the traceback.
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        if args.verbose and not isinstance(e, KeyboardInterrupt):
            raise
        line, status = explain(e)
        print(f"ganpool: {line}", file=sys.stderr)
        return status
    finally:
        for store in args.stores:
            store.close()

"""`ganpool coordinator`, `ganpool worker` and `ganpool train-local`: the processes that
train, each printing a line per step or unit."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ganpool.cli.args import fmt, open_store, run_config
from ganpool.cli.parser import command, config_args, db_arg, int_at_least, run_arg, threads_arg
from ganpool.errors import ConfigError
from ganpool.protocol.vocabulary import Phase, version_to_step


def cmd_coordinator(args) -> int:
    import torch

    from ganpool.coordinator import Coordinator
    from ganpool.runs import find_run
    from ganpool.throughput import RecentImages

    torch.set_num_threads(args.threads)
    dsn, store = open_store(args)
    run = find_run(store, args.run)
    store.close()
    recent = RecentImages()
    cfg = run.config
    phase_label = {Phase.BOTH: "", Phase.D: " (D phase)", Phase.G: ""}

    def on_step(r) -> None:
        phase = cfg.phase_of(r.version - 1)
        if phase != Phase.G:  # a G phase reuses its D phase's images
            recent.add(r.images)
        # A D phase is the first half of the step it names; its G phase completes it.
        step = version_to_step(r.version, cfg.versions_per_step, started=True)
        print(
            f"step {step:6d}{phase_label[phase]:<10} | epoch {r.epochs:6.2f} | "
            f"{recent.rate():7.1f} img/s | G {fmt(r.g_loss, '.3f')} D {fmt(r.d_loss, '.3f')} | "
            f"D(x) {fmt(r.d_real, '.2f')} D(G(z)) {fmt(r.d_fake, '.2f')} | "
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
    dsn, store = open_store(args)
    run = find_run(store, args.run)
    student = store.login_name()  # a student's name is their login's, always
    store.close()
    name = student or args.name or f"{os.environ.get('USER', 'student')}@{socket.gethostname()}"

    cfg = run.config
    phase_label = {Phase.BOTH: "", Phase.D: " (D phase)", Phase.G: " (G phase)"}

    def on_unit(p) -> None:
        # A unit of version v computes version v + 1: the step that version belongs to.
        step = version_to_step(p.version + 1, cfg.versions_per_step, started=True)
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


def cmd_train_local(args) -> int:
    import torch

    from ganpool.data.datasets import open_dataset
    from ganpool.evaluation.grid import sample_grid
    from ganpool.protocol.schedule import sample_seed
    from ganpool.serialization.tensors import pack
    from ganpool.training.local import train_local

    torch.set_num_threads(args.threads)
    cfg = run_config(args)
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


def register_coordinator(sub) -> None:
    co = command(sub, "coordinator", "aggregate results and publish versions", cmd_coordinator)
    db_arg(co)
    run_arg(co)
    co.add_argument("--out", type=Path, help="also write sample grids here")
    threads_arg(co, 1)
    co.add_argument("--data", type=Path, help="the run's image folder, for quality_every")


def register_worker(sub) -> None:
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
        "--max-units", type=int_at_least(0), default=0, help="leave after this many (0: never)"
    )


def register_train_local(sub) -> None:
    t = command(sub, "train-local", "the single-process reference trainer (no database)",
                cmd_train_local)  # fmt: skip
    config_args(t)
    t.add_argument("--out", default="train-local-out", help="folder for grids and weights")
    threads_arg(t, 2)

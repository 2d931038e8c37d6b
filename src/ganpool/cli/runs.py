"""`ganpool run ...` and `ganpool status`: create, list, control, delete and read runs."""

from __future__ import annotations

from ganpool.cli.args import fmt, open_store, run_config
from ganpool.cli.parser import command, config_args, db_arg, group, run_arg


def cmd_run_create(args) -> int:
    from ganpool.data.datasets import open_dataset
    from ganpool.runs import create_run

    cfg = run_config(args)
    dataset = open_dataset(cfg.dataset, cfg.image_size, cfg.channels, args.data)
    _, store = open_store(args)
    run = create_run(store, args.run, cfg, dataset)
    print(f"created run {run.name!r} (id {run.id}) on {len(dataset)} images, {dataset.fingerprint}")
    return 0


def cmd_run_control(args) -> int:
    from ganpool.runs import control_run, find_run

    _, store = open_store(args)
    run = find_run(store, args.run)
    print(f"run {run.name!r} is now {control_run(store, run, args.action)}")
    return 0


def cmd_run_list(args) -> int:
    from ganpool.runs import coordinator_alive, list_runs

    _, store = open_store(args)
    lines = list_runs(store)
    if not lines:
        print("no runs yet: create one with `ganpool run create`")
        return 0
    print(f"{'run':<28} {'status':<9} {'steps':>13} {'images':>10}  coordinator  created")
    for line in lines:
        r = line.listing
        steps = f"{line.steps}/{line.target}" if line.target else str(line.steps)
        alive = "running" if coordinator_alive(store, r.id) else "-"
        print(
            f"{r.name:<28} {r.status:<9} {steps:>13} {r.images_applied:>10}  "
            f"{alive:<11}  {r.created_at:%Y-%m-%d %H:%M}"
        )
    return 0


def cmd_run_delete(args) -> int:
    from ganpool.runs import delete_run, find_run

    _, store = open_store(args)
    run = find_run(store, args.run)
    delete_run(store, run, force=args.force)
    print(f"deleted run {run.name!r} and everything recorded for it")
    return 0


def cmd_status(args) -> int:
    from ganpool.runs import find_run, run_report

    _, store = open_store(args)
    run = find_run(store, args.run)
    cfg = run.config
    report = run_report(store, run)
    s = report.summary
    target = f"/{cfg.max_steps}" if cfg.max_steps else ""
    print(
        f"run {s.name!r}: {s.status}, step {cfg.steps_of(s.current_version)}{target}, "
        f"epoch {s.epochs:.2f}, {s.images_applied} images applied, "
        f"{report.images_per_s:.1f} img/s, {s.workers_online} worker(s) online, "
        f"coordinator {'running' if report.coordinator_alive else 'not running'}"
    )
    print(
        f"units applied {s.units_applied}, rejected {s.units_rejected}, "
        f"reissued {s.units_reissued}, backup copies {s.units_copied}, "
        f"quarantined {s.units_quarantined}"
    )
    for u in report.quarantined:
        bad = ", ".join(map(str, u.bad_images or [])) or "not named"
        print(f"quarantined unit {u.id} (bad images: {bad}): {u.reason}")
    if report.leaderboard:
        print(f"\n{'worker':<24} {'images':>8} {'units':>6} {'rejected':>8}")
        for row in report.leaderboard:
            print(f"{row.name:<24} {row.images:>8} {row.units:>6} {row.rejected:>8}")
    if report.recent:
        print(f"\n{'step':>6} {'G loss':>8} {'D loss':>8} {'D(x)':>6} {'D(G(z))':>8}")
        for m in report.recent:  # a phase of the alternating rule computes some losses only
            print(
                f"{m.step:>6} {fmt(m.g_loss, '>8.3f')} {fmt(m.d_loss, '>8.3f')} "
                f"{fmt(m.d_real, '>6.2f')} {fmt(m.d_fake, '>8.2f')}"
            )
    return 0


def register_run(sub) -> None:
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


def register_status(sub) -> None:
    s = command(sub, "status", "a run's progress, leaderboard and recent losses", cmd_status)
    db_arg(s)
    run_arg(s)

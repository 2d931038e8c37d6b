"""`ganpool metrics`, `evaluate`, `export` and `sample`: what a run produces, out of the
database: its curves, its scores, its generator, and faces drawn from it."""

from __future__ import annotations

from pathlib import Path

from ganpool.cli.args import check_new_file, open_store
from ganpool.cli.parser import command, db_arg, int_at_least, run_arg, threads_arg
from ganpool.errors import ConfigError


def cmd_metrics(args) -> int:
    from ganpool.export.metrics import metric_rows, write_csv, write_tensorboard
    from ganpool.runs import find_run

    if not args.csv and not args.tensorboard:
        raise ConfigError("say where to write: --csv FILE and/or --tensorboard FOLDER")
    if args.csv:
        check_new_file(Path(args.csv), "--csv")
    _, store = open_store(args)
    run = find_run(store, args.run)
    rows = metric_rows(store, run)
    if args.csv:
        write_csv(rows, Path(args.csv))
        print(f"wrote {len(rows)} steps to {args.csv}")
    if args.tensorboard:
        logdir = write_tensorboard(rows, Path(args.tensorboard), run.name)
        print(f"wrote {len(rows)} steps to {logdir} (tensorboard --logdir {args.tensorboard})")
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from ganpool.evaluation.quality import InceptionFeatures
    from ganpool.evaluation.scoring import exported_generator, record_score, run_generator, score

    torch.set_num_threads(args.threads)
    if args.model is None and args.dataset is not None:
        raise ConfigError("--dataset goes with --model (a run knows its own dataset)")
    features = InceptionFeatures()  # fail early, in one line, without the metrics extra
    if args.model:
        g, nz, dataset = exported_generator(Path(args.model), args.dataset, args.data)
        label, run = str(args.model), None
    else:
        from ganpool.runs import find_run

        _, store = open_store(args)
        run = find_run(store, args.run)
        version, g, dataset = run_generator(store, run, args.version, args.data)
        nz, label = run.config.nz, f"run {run.name!r} version {version}"
    q = score(g, dataset, nz, n_fake=args.n, max_real=args.real, seed=args.seed, features=features)
    print(
        f"{label}: KID {q.kid:.4f} ± {q.kid_std:.4f}, FID {q.fid:.1f} "
        f"({q.n_real} real and {q.n_fake} generated images)"
    )
    if run is not None:
        record_score(store, run, version, q)
    return 0


def cmd_export(args) -> int:
    from ganpool.export.model import export_generator
    from ganpool.runs import find_run

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; name a folder to write the model into")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")
    _, store = open_store(args)
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

    check_new_file(Path(args.out), "--out", force=args.force)
    g, cfg = load_generator(Path(args.model))
    noise = torch.randn(args.n, cfg.nz, generator=torch.Generator().manual_seed(args.seed))
    Path(args.out).write_bytes(sample_png(g, noise))
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def register_metrics(sub) -> None:
    me = command(sub, "metrics", "export a run's curves as CSV or TensorBoard files", cmd_metrics)
    db_arg(me)
    run_arg(me)
    me.add_argument("--csv", metavar="FILE", help="write one row per step here")
    me.add_argument(
        "--tensorboard", metavar="FOLDER", help="write event files under FOLDER/RUN "
        "(needs the tensorboard extra)",
    )  # fmt: skip


def register_evaluate(sub) -> None:
    ev = command(sub, "evaluate", "KID and FID of a run's generator or an exported one",
                 cmd_evaluate)  # fmt: skip
    db_arg(ev)
    run_arg(ev)
    ev.add_argument("--version", type=int_at_least(0), help="a kept version (default: newest)")
    ev.add_argument("--model", help="an exported generator instead of a run")
    ev.add_argument("--dataset", choices=["faces", "folder"], help="with --model")
    ev.add_argument("--data", type=Path, help="image folder or zip of the dataset")
    # KID and FID compare two sets' statistics: fewer than two images have none.
    ev.add_argument("--n", type=int_at_least(2), default=500, help="generated images")
    ev.add_argument("--real", type=int_at_least(2), default=10000, help="real images at most")
    ev.add_argument("--seed", type=int, default=0, help="noise seed of the generated images")
    threads_arg(ev, 2)


def register_export(sub) -> None:
    ex = command(sub, "export", "write the generator, its config, a model card and a grid",
                 cmd_export)  # fmt: skip
    db_arg(ex)
    run_arg(ex)
    ex.add_argument("--version", type=int_at_least(0), help="a kept version (default: newest)")
    ex.add_argument("--out", required=True, help="folder to write")
    ex.add_argument("--push", metavar="REPO", help="also upload to this Hugging Face model repo")


def register_sample(sub) -> None:
    sa = command(sub, "sample", "draw a grid of faces from an exported generator", cmd_sample)
    sa.add_argument("--model", required=True, help="folder (or .safetensors) from `export`")
    sa.add_argument("--n", type=int_at_least(1, 1024), default=64, help="faces in the grid")
    sa.add_argument("--seed", type=int, default=0, help="noise seed: the same seed, the same faces")
    sa.add_argument("--out", default="grid.png", help="PNG file to write")
    sa.add_argument("--force", action="store_true", help="replace --out if it exists")

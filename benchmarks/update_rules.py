"""Which update rule trains better? KID at equal images processed, over several seeds.

Configurations: train-local with the alternating rule (the DCGAN paper's loop), and the
distributed run (coordinator + workers in threads, an embedded PostgreSQL) with each rule,
with 1 and with 3 workers. Small model on the built-in faces.

    .venv/bin/python benchmarks/update_rules.py --steps 300 --seeds 0 1 2

Superseded by benchmarks/quality_protocol.py (paired seeds, confidence intervals, equal
images): docs/quality.md reports its figures, not this script's.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.evaluation.quality import InceptionFeatures, generator_quality
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect, migrate
from ganpool.training.local import train_local
from ganpool.worker import Worker

CONFIGS = [
    ("train-local, alternating (paper)", "local", "alternating", 0),
    ("distributed, simultaneous, 1 worker", "db", "simultaneous", 1),
    ("distributed, simultaneous, 3 workers", "db", "simultaneous", 3),
    ("distributed, alternating, 1 worker", "db", "alternating", 1),
    ("distributed, alternating, 3 workers", "db", "alternating", 3),
]


def train_distributed(dsn: str, name: str, cfg, workers: int) -> tuple[torch.nn.Module, int]:
    store = Store(connect(dsn))
    run = create_run(store, name, cfg, builtin_faces(cfg.image_size, cfg.channels))
    store.close()
    coordinator = Coordinator(dsn, run, poll_s=0.2)
    threads = [threading.Thread(target=coordinator.serve)]
    threads += [
        threading.Thread(target=Worker(dsn, run, f"w{i}", device="cpu", poll_s=0.2).serve)
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with connect(dsn) as conn:
        refused = conn.execute(
            "SELECT count(*) FROM rejections WHERE run_id = %s", (run.id,)
        ).fetchone()["count"]
    return coordinator.state.g, refused


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kid-samples", type=int, default=200)
    ap.add_argument("--only", help="run only the configurations whose label contains this")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faces = builtin_faces()
    features = InceptionFeatures()
    real = features(faces.images)
    images = args.steps * 50
    print(
        f"small model, built-in faces (100), {args.steps} steps x 50 images = {images} images "
        f"per run; KID on {args.kid_samples} generated vs 100 real images\n",
        flush=True,
    )
    table = []
    with EmbeddedPostgres() as pg:
        dsn = pg.url()
        with connect(dsn) as conn:
            migrate(conn)
        for label, where, rule, workers in CONFIGS:
            if args.only and args.only not in label:
                continue
            kids, walls = [], []
            for seed in args.seeds:
                cfg = load_run_config(
                    preset="small",
                    overrides={
                        "seed": seed,
                        "max_steps": args.steps,
                        "update_rule": rule,
                        "sample_every": 10**6,
                    },
                )
                t0 = time.perf_counter()
                refused = 0
                if where == "local":
                    g = train_local(cfg, faces, args.steps).g
                else:
                    g, refused = train_distributed(dsn, f"{rule}-{workers}-{seed}", cfg, workers)
                walls.append(time.perf_counter() - t0)
                q = generator_quality(
                    g,
                    None,
                    cfg.nz,
                    args.kid_samples,
                    seed=0,
                    features=features,
                    real_features=real,
                )
                kids.append(q.kid)
                print(
                    f"{label:<40} seed {seed}: KID {q.kid:.4f} (± {q.kid_std:.4f} over "
                    f"subsets), FID {q.fid:.1f}, {walls[-1]:.0f} s, {refused} results refused",
                    flush=True,
                )
            table.append((label, kids, walls))
    print("\n| configuration | KID mean ± sd over seeds | per seed | wall s (mean) |")
    print("|---|---|---|---|")
    for label, kids, walls in table:
        sd = statistics.stdev(kids) if len(kids) > 1 else 0.0
        per = ", ".join(f"{k:.4f}" for k in kids)
        print(
            f"| {label} | {statistics.mean(kids):.4f} ± {sd:.4f} | {per} | "
            f"{statistics.mean(walls):.0f} |"
        )


if __name__ == "__main__":
    main()

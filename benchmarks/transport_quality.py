"""Does sending gradients in 16 bits hurt training? KID and loss curves, same seeds.

Each configuration trains the small model on the built-in faces with train-local, which
rounds every unit's gradients to the run's transport dtype exactly as a distributed run
does (tests/integration/test_training.py checks a bf16 distributed run against it).

    .venv/bin/python benchmarks/transport_quality.py --steps 300 --seeds 0 1 2

Superseded by benchmarks/quality_protocol.py (paired seeds, confidence intervals, equal
images): docs/quality.md reports its figures, not this script's.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ganpool.data.datasets import builtin_faces
from ganpool.evaluation.quality import InceptionFeatures, generator_quality
from ganpool.settings import load_run_config
from ganpool.training.local import train_local

TRANSPORTS = ("float32", "bfloat16", "float16")
WINDOW = 25  # steps per point of the smoothed loss curves


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kid-samples", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    faces = builtin_faces()
    features = InceptionFeatures()
    real = features(faces.images)
    kids: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    curves: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for seed in args.seeds:
        for transport in TRANSPORTS:
            cfg = load_run_config(preset="small", overrides={"seed": seed, "transport": transport})
            losses: list[tuple[float, float]] = []
            g = train_local(
                cfg,
                faces,
                args.steps,
                on_step=lambda s, _, out=losses: out.append((s.d_loss, s.g_loss)),
            ).g
            q = generator_quality(
                g, None, cfg.nz, args.kid_samples, seed=0, features=features, real_features=real
            )
            kids[transport].append(q.kid)
            curves[(transport, seed)] = losses
            print(f"{transport:<9} seed {seed}: KID {q.kid:.4f} (± {q.kid_std:.4f})", flush=True)
    print("\n| transport | KID mean ± sd over seeds | per seed | loss curves vs fp32 |")
    print("|---|---|---|---|")
    for t in TRANSPORTS:
        gaps = []
        for seed in args.seeds:
            ours, ref = curves[(t, seed)], curves[("float32", seed)]
            for i in range(0, args.steps - WINDOW + 1, WINDOW):
                for k in (0, 1):
                    a = statistics.mean(x[k] for x in ours[i : i + WINDOW])
                    b = statistics.mean(x[k] for x in ref[i : i + WINDOW])
                    gaps.append(abs(a - b))
        sd = statistics.stdev(kids[t]) if len(kids[t]) > 1 else 0.0
        per = ", ".join(f"{k:.4f}" for k in kids[t])
        print(
            f"| {t} | {statistics.mean(kids[t]):.4f} ± {sd:.4f} | {per} | "
            f"mean |Δ| of {WINDOW}-step mean losses {statistics.mean(gaps):.3f}, "
            f"max {max(gaps):.3f} |"
        )


if __name__ == "__main__":
    main()

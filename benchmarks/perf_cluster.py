"""The cluster section of `make bench`: coordinator + 2 workers against torch.distributed
(gloo) data parallel with 2 processes, same global batch, same computation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from perf_common import UNIT, UNITS_PER_STEP, config, new_run, spawn, wait
from perf_worker import compute_fraction, train

from ganpool.data.datasets import builtin_faces
from ganpool.training.gradients import unit_gradients


def ddp_process(rank: str, world: str, port: str, steps: str, out: str) -> None:
    """One rank of the baseline: the same units (64 images, the same gradient function) on
    its share of the global batch, gradients all-reduced over gloo, Adam on both networks."""
    import torch.distributed as dist

    from ganpool.training.state import TrainingState

    torch.set_num_threads(1)
    rank_i, world_i = int(rank), int(world)
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    dist.init_process_group("gloo", rank=rank_i, world_size=world_i)
    cfg = config("dcgan64")
    state = TrainingState(cfg)
    faces = builtin_faces(64, 3)
    params = [p for net in (state.g, state.d) for p in net.parameters()]
    flat = torch.zeros(sum(p.numel() for p in params))
    per_rank = UNITS_PER_STEP // world_i
    marks = []
    for step in range(int(steps)):
        flat.zero_()
        for k in range(per_rank):
            unit = step * UNITS_PER_STEP + rank_i * per_rank + k
            idx = [(unit * UNIT + i) % len(faces) for i in range(UNIT)]
            r = unit_gradients(state.g, state.d, faces.batch(idx), unit, cfg.nz)
            grads = [r.tensors[f"grad.{n}"] for n in _param_names(state)]
            flat.add_(torch.cat([g.reshape(-1) for g in grads]))
        dist.all_reduce(flat)  # the sum over ranks, as DDP's reducer does per bucket
        flat.div_(UNITS_PER_STEP)
        at = 0
        for p in params:
            p.grad = flat[at : at + p.numel()].view_as(p).clone()
            at += p.numel()
        state.opt_g.step()
        state.opt_d.step()
        dist.barrier()
        marks.append(time.time())
    dist.destroy_process_group()
    if rank_i == 0:
        Path(out).write_text(json.dumps(marks))


def _param_names(state) -> list[str]:
    return [f"G.{n}" for n, _ in state.g.named_parameters()] + [
        f"D.{n}" for n, _ in state.d.named_parameters()
    ]


def bench_cluster(dsn: str, tmp: Path, steps: int = 4) -> dict:
    # The baseline: 2 processes x 1 thread, 8 units of 64 per step (4 each).
    out = tmp / "ddp.json"
    port = str(29500 + os.getpid() % 1000)
    procs = [spawn("_ddp", str(r), "2", port, str(steps), str(out)) for r in range(2)]
    wait(procs, timeout=900)
    marks = json.loads(out.read_text())
    ddp = UNITS_PER_STEP * UNIT * (len(marks) - 1) / (marks[-1] - marks[0])
    # ganpool: the coordinator here, 2 worker processes x 1 thread, the same 8 x 64 per step.
    cfg = config("dcgan64", results_per_step=UNITS_PER_STEP, max_steps=steps)
    run = new_run(dsn, "cluster", cfg)
    timeline, timelines = train(dsn, run, 2, tmp, timeout=900)
    published = sorted((v, t) for t, e, v in timeline if e == "published")
    (v0, t0), (v1, t1) = published[1], published[-1]  # from version 1: all warmed up
    ours = UNITS_PER_STEP * UNIT * (v1 - v0) / (t1 - t0)
    return {
        "ddp_images_per_s": ddp,
        "ganpool_images_per_s": ours,
        "throughput_ratio_vs_ddp": ours / ddp,
        "global_batch": UNITS_PER_STEP * UNIT,
        "worker_compute_fractions": [
            compute_fraction(w["timeline"], from_version=1)[0] for w in timelines
        ],
    }

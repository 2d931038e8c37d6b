"""Simulated GPU students for the WAN benchmark: real `Worker`s whose computation is a
stand-in, several to a process, each connecting to PostgreSQL through its own shaped link.

The stand-in (`SimulatedGPU`) replaces the worker's one seam for computing a unit,
`Worker.compute`: a unit takes images / R seconds (a sleep, so sixteen "GPUs" fit on two
cores), and returns a real result of the right size, which screening accepts:

* the gradients are real ones, computed once by the harness on version 0 and reused (they
  travel in the run's transport dtype, cast by the worker's own packer);
* the BatchNorm statistics are what a forward pass would leave on the version being
  computed: r = k * (the version's statistics) + (1 - k) * b, with the batch's statistics b
  measured once (screening checks exactly this relation, so a stale copy would be refused).

    python wan_workers.py TEMPLATE R RUN_NAME DBNAME OUT_DIR NAME=PORT ...

Each worker's DSN is postgresql://postgres@127.0.0.1:PORT/DBNAME (its link). On the line
"dump" on stdin it writes OUT_DIR/NAME.json (the worker's timeline and compute spans) and
answers "dumped"; when stdin closes it exits at once, so it never outlives the harness.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ganpool.models.dcgan import build_models
from ganpool.runs import find_run
from ganpool.settings import RunConfig
from ganpool.store import Store, connect
from ganpool.training.gradients import UnitResult, float_buffers, result_manifest, unit_gradients

BN_MOMENTUM = 0.1
# Forward passes a network's statistics go through in a unit (training/gradients.py).
FORWARDS = {"G": 1, "D": 2}


def _keep(key: str) -> float:
    """The share of the version's statistic left in a result's statistic `key`."""
    return (1 - BN_MOMENTUM) ** FORWARDS[key.split(".")[1]]


def make_template(cfg: RunConfig, images: torch.Tensor, path: Path) -> dict[str, float]:
    """Compute one real unit on version 0 and save what the stand-in reuses: the gradients,
    and each BatchNorm statistic's batch part b. Returns the unit's losses."""
    torch.manual_seed(cfg.seed)
    g, d = build_models(cfg.model, cfg.seed)
    prior = {f"buf.G.{k}": v.clone() for k, v in float_buffers(g).items()}
    prior |= {f"buf.D.{k}": v.clone() for k, v in float_buffers(d).items()}
    r = unit_gradients(g, d, images, 1, cfg.nz, "both")
    out = {k: v.contiguous() for k, v in r.tensors.items() if k.startswith("grad.")}
    for key, value in r.tensors.items():
        if key.startswith("buf."):
            k = _keep(key)
            out["batch." + key] = ((value.double() - k * prior[key].double()) / (1 - k)).float()
    losses = {"g_loss": r.g_loss, "d_loss": r.d_loss, "d_real": r.d_real, "d_fake": r.d_fake}
    save_file(out, str(path), metadata={k: str(v) for k, v in losses.items()})
    return losses


class SimulatedGPU:
    """`Worker.compute` on a simulated GPU of `images_per_s`: see the module's docstring."""

    def __init__(self, template: Path, images_per_s: float, cfg: RunConfig):
        tensors = load_file(str(template))
        self.grads = {k: v for k, v in tensors.items() if k.startswith("grad.")}
        self.batch = {k[6:]: v for k, v in tensors.items() if k.startswith("batch.")}
        self.rate = images_per_s
        g, d = build_models(cfg.model, cfg.seed)
        self.manifests = {p: result_manifest(g, d, p) for p in ("both", "D", "G")}
        self.spans: list[tuple[float, float]] = []  # (wall start, wall end) of each unit

    def __call__(self, g, d, real, noise_seed, nz, phase="both", batch=None) -> UnitResult:
        start, t0 = time.time(), time.perf_counter()
        images = real.shape[0] if real is not None else batch
        current = {f"buf.G.{k}": v for k, v in float_buffers(g).items()}
        current |= {f"buf.D.{k}": v for k, v in float_buffers(d).items()}
        tensors = {}
        for key in self.manifests[phase]:
            if key.startswith("grad."):
                tensors[key] = self.grads[key]
            else:  # what this batch's forward passes leave on this version's statistics
                k = _keep(key)
                tensors[key] = k * current[key] + (1 - k) * self.batch[key]
        left = images / self.rate - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)
        self.spans.append((start, time.time()))
        return UnitResult(tensors, g_loss=0.7, d_loss=1.4, d_real=0.5, d_fake=0.5)


def host(template: str, rate: str, run_name: str, dbname: str, out_dir: str, *specs: str) -> None:
    """Run one Worker per NAME=PORT in threads until stdin closes."""
    from ganpool.worker import Worker

    torch.set_num_threads(1)
    workers: dict[str, tuple[Worker, SimulatedGPU]] = {}
    threads = []
    for spec in specs:
        name, port = spec.split("=")
        dsn = f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
        store = Store(connect(dsn))  # the run's settings come over the link, as for a student
        run = find_run(store, run_name)
        store.close()
        worker = Worker(dsn, run, name, device="cpu", poll_s=2.0)
        gpu = SimulatedGPU(Path(template), float(rate), run.config)
        worker.compute = gpu  # the seam: this worker's units run on the stand-in
        workers[name] = (worker, gpu)
        threads.append(threading.Thread(target=worker.serve, name=name, daemon=True))
    for t in threads:
        t.start()
    for line in sys.stdin:
        if line.strip() == "dump":
            for name, (worker, gpu) in workers.items():
                data = {"timeline": list(worker.timeline), "compute": gpu.spans}
                (Path(out_dir) / f"{name}.json").write_text(json.dumps(data))
            print("dumped", flush=True)
    os._exit(0)  # stdin closed: the harness is done with us (or gone)


if __name__ == "__main__":
    host(*sys.argv[1:])

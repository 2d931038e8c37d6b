"""What `make bench` reports: the machine it ran on and the table of figures against goals."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ganpool.store import Store, connect


def machine(dsn: str) -> dict:
    store = Store(connect(dsn))
    version = store.conn.execute("SHOW server_version").fetchone()["server_version"]
    store.close()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "postgresql": version,
        "gpu": "none: no GPU on this machine, nothing measured on one. The CUDA/MPS path "
        "(--device, pinned host memory) is the same protocol and is exercised here only on the "
        "CPU.",
    }


def table(r: dict) -> str:
    rows = []

    def add(name, value, goal, met):
        rows.append(f"| {name} | {value} | {goal} | {'yes' if met else 'NO'} |")

    if "worker_compute_fraction" in r:
        add(
            "worker compute fraction (1 worker x 1 thread, 8 x 64/step, fp32)",
            f"{r['worker_compute_fraction']:.3f}",
            ">= 0.95",
            r["worker_compute_fraction"] >= 0.95,
        )
    if "throughput_ratio_vs_ddp" in r:
        add(
            "cluster images/s vs gloo data parallel (2 x 1 thread)",
            f"{r['throughput_ratio_vs_ddp']:.3f}",
            ">= 0.9",
            r["throughput_ratio_vs_ddp"] >= 0.9,
        )
    if "roundtrip_ms_fp32" in r:
        add(
            "25 MB result up + down, fp32 (ms)",
            f"{r['roundtrip_ms_fp32']:.0f}",
            "< 100",
            r["roundtrip_ms_fp32"] < 100,
        )
        add(
            "the same in bf16 / fp16 (ms)",
            f"{r['roundtrip_ms_fp16']:.0f}",
            "< 50",
            r["roundtrip_ms_fp16"] < 50,
        )
    if "wakeup_p99_ms" in r:
        add(
            "publication -> worker claims, p99 (ms)",
            f"{r['wakeup_p99_ms']:.1f}",
            "< 5",
            r["wakeup_p99_ms"] < 5,
        )
    if "coordinator_step_overhead_ms" in r:
        add(
            "last result commit -> next NOTIFY, N=8, median (ms)",
            f"{r['coordinator_step_overhead_ms']:.0f}",
            "< 250",
            r["coordinator_step_overhead_ms"] < 250,
        )
    if "claims_per_second_16_clients" in r:
        add(
            "claim-and-complete / s, 16 clients, 20,000 units",
            f"{r['claims_per_second_16_clients']:.0f}",
            ">= 3000",
            r["claims_per_second_16_clients"] >= 3000,
        )
    if "scale" in r:
        s = r["scale"]
        add(
            f"{s['workers']} simulated workers, {s['seconds']:.0f} s: units lost or doubled",
            f"{s['units_applied_twice'] + s['epochs_not_exactly_once']}",
            "0",
            s["units_applied_twice"] == 0 and s["epochs_not_exactly_once"] == 0,
        )
    head = "| figure | measured | goal | met |\n|---|---|---|---|\n"
    return head + "\n".join(rows)

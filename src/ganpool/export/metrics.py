"""A run's curves out of the database: a CSV for a spreadsheet, or TensorBoard event files.

One row per step in the paper's sense (under the alternating rule, a D phase and its G
phase are one step: see the `all_metrics` query), with the quality metric where measured.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ganpool.errors import GanpoolError
from ganpool.runs import Run
from ganpool.store import Store
from ganpool.store.instructor import InstructorStore

COLUMNS = ("step", "epoch", "g_loss", "d_loss", "d_real", "d_fake", "workers", "units", "images")
QUALITY = ("kid", "kid_std", "fid")


def metric_rows(store: Store, run: Run) -> list[dict]:
    """One row per completed step: the COLUMNS, the QUALITY where measured, and its time."""
    db = InstructorStore.of(store)
    per_step = run.config.versions_per_step
    quality = {q.step: q for q in db.quality(run.id, per_step)}
    return [
        {k: getattr(r, k) for k in COLUMNS}
        | {"time": r.created_at.isoformat()}
        | {k: getattr(quality[r.step], k) if r.step in quality else None for k in QUALITY}
        for r in db.all_steps(run.id, per_step)
    ]


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("x", newline="") as f:  # never overwrite: "x" refuses an existing file
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, *QUALITY, "time"])
        writer.writeheader()
        writer.writerows(rows)


def write_tensorboard(rows: list[dict], folder: Path, run_name: str) -> Path:
    """Scalars under losses/, discriminator/ and quality/, at the paper's step, timed when
    the step was taken. Needs the `tensorboard` extra (tensorboardX: a writer without
    TensorFlow)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise GanpoolError(
            "TensorBoard export needs the tensorboard extra: pip install 'ganpool[tensorboard]'"
        ) from None
    from datetime import datetime

    logdir = folder / run_name
    writer = SummaryWriter(logdir=str(logdir))
    try:
        for r in rows:
            at = datetime.fromisoformat(r["time"]).timestamp()
            for tag, key in (
                ("losses/G", "g_loss"),
                ("losses/D", "d_loss"),
                ("discriminator/D_x", "d_real"),  # D(x): TensorBoard tags avoid brackets
                ("discriminator/D_G_z", "d_fake"),  # D(G(z))
                ("progress/epoch", "epoch"),
                ("quality/KID", "kid"),
                ("quality/FID", "fid"),
            ):
                if r[key] is not None:
                    writer.add_scalar(tag, float(r[key]), global_step=r["step"], walltime=at)
    finally:
        writer.close()
    return logdir

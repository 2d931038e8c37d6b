"""Take the model home: the generator as safetensors with its config, a model card and a grid.

`export_generator` reads one version of a run from the database; `load_generator` reads the
files back (checking names, shapes and dtypes against the config's model) for `ganpool sample`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ganpool.errors import GanpoolError, PayloadError
from ganpool.evaluation.grid import grid_png
from ganpool.models.dcgan import Generator, ModelConfig
from ganpool.runs import Run, load_version
from ganpool.serialization.tensors import manifest_of, pack, read_metadata, unpack
from ganpool.store import Store
from ganpool.store.instructor import InstructorStore

WEIGHTS = "generator.safetensors"


def export_generator(store: Store, run: Run, out: Path, version: int | None = None) -> Path:
    cfg = run.config
    version, g, _ = load_version(
        store,
        run,
        version,
        not_kept=" (see keep_versions and milestone_every); export the newest version instead",
    )
    db = InstructorStore.of(store)
    summary = db.run_summary(run.id)
    board = db.leaderboard(run.id)
    metrics = db.recent_steps(run.id, cfg.versions_per_step, limit=1)
    model = {k: getattr(cfg.model, k) for k in ("image_size", "channels", "nz", "ngf", "ndf")}
    card = {
        "run": run.name,
        "version": version,
        "model": model,
        "dataset": {
            "kind": cfg.dataset,
            "fingerprint": run.fingerprint,
            "images": run.dataset_size,
        },
        "steps": cfg.steps_of(version),  # the paper's steps (two versions each, alternating)
        "epochs": round(float(summary.epochs), 4),
        "images_applied": int(summary.images_applied),
        "contributors": [{"name": r.name, "images": int(r.images)} for r in board],
        "update_rule": cfg.update_rule,
        "last_metrics": asdict(metrics[-1]) if metrics else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / WEIGHTS).write_bytes(
        pack(g.state_dict(), metadata={"ganpool": json.dumps({"model": model, "version": version})})
    )
    (out / "config.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    noise = torch.randn(64, cfg.nz, generator=torch.Generator().manual_seed(0))
    (out / "samples.png").write_bytes(sample_png(g, noise))
    (out / "README.md").write_text(_model_card(card))
    return out


def _model_card(card: dict) -> str:
    m = card["model"]
    people = ", ".join(f"{c['name']} ({c['images']} images)" for c in card["contributors"])
    lines = [
        f"# DCGAN generator — ganpool run `{card['run']}`, version {card['version']}",
        "",
        f"- Architecture: DCGAN generator (Radford et al., 2015), z of {m['nz']} → "
        f"{m['channels']}×{m['image_size']}×{m['image_size']} in [-1, 1], ngf={m['ngf']}.",
        f"- Dataset: `{card['dataset']['kind']}`, {card['dataset']['images']} images, "
        f"fingerprint `{card['dataset']['fingerprint']}`.",
        f"- Training: {card['steps']} steps, {card['epochs']} epochs, "
        f"{card['images_applied']} images, trained together through PostgreSQL.",
        f"- Contributors: {people or 'none recorded'}.",
        f"- Last step's metrics: {card['last_metrics']}.",
        "",
        "![samples](samples.png)",
        "",
        "Sample more: `ganpool sample --model . --n 64 --seed 1 --out grid.png`.",
        "",
    ]
    return "\n".join(lines)


def sample_png(g: Generator, noise: torch.Tensor) -> bytes:
    g.eval()
    with torch.no_grad():
        return grid_png(g(noise), scale=2)


def load_generator(path: Path) -> tuple[Generator, ModelConfig]:
    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.exists():
        raise GanpoolError(f"{weights} does not exist: pass the folder `ganpool export` wrote")
    blob = weights.read_bytes()
    try:
        meta = json.loads(read_metadata(blob).get("ganpool", ""))
        cfg = ModelConfig(**meta["model"])
    except (ValueError, KeyError, TypeError, PayloadError):
        raise GanpoolError(f"{weights} is not a generator exported by ganpool") from None
    g = Generator(cfg)
    g.load_state_dict(unpack(blob, manifest_of(g.state_dict())))
    return g, cfg

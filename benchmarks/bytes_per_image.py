"""Bytes moved per trained image by each update rule, from the real payload sizes.

No training and no database: the payloads are packed exactly as a worker packs them
(ganpool.serialization.Packer over each rule's manifest), and the weights as the coordinator
publishes them. A unit uploads one result and, in the worst case for a class on home links
(each worker computes one unit per version), downloads one version's weights per phase.

    python benchmarks/bytes_per_image.py [--preset dcgan64] [--unit-size 64]
"""

from __future__ import annotations

import argparse

from ganpool.models.dcgan import build_models
from ganpool.serialization.tensors import Packer, manifest_of
from ganpool.settings import load_run_config
from ganpool.training.local_steps import payload_manifest
from ganpool.training.state import weights_of


def payload_bytes(cfg, g, d, phase: str) -> int:
    return len(Packer(payload_manifest(cfg, g, d, phase)).buffer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dcgan64")
    parser.add_argument("--unit-size", type=int, default=64)
    args = parser.parse_args()
    base = load_run_config(preset=args.preset, overrides={"unit_size": args.unit_size})
    g, d = build_models(base.model, base.seed)
    weights = len(Packer(manifest_of(weights_of(g, d))).buffer)
    b = args.unit_size
    rows = []
    for transport in ("float32", "bfloat16"):
        cfg = base.replace(update_rule="simultaneous", transport=transport)
        up = payload_bytes(cfg, g, d, "both")
        rows.append((f"simultaneous, {transport}", b, up, weights))
        cfg = cfg.replace(update_rule="alternating")
        up = payload_bytes(cfg, g, d, "D") + payload_bytes(cfg, g, d, "G")
        rows.append((f"alternating, {transport}", b, up, 2 * weights))
    for h in (8, 32, 128):
        for dtype in ("float32", "bfloat16", "int8"):
            cfg = base.replace(update_rule="local", local_steps=h, delta_dtype=dtype)
            rows.append((f"local H={h}, {dtype}", h * b, payload_bytes(cfg, g, d, "both"), weights))
    sync = (rows[0][2] + rows[0][3]) / rows[0][1]  # today's default transport, one version
    alternating = (rows[1][2] + rows[1][3]) / rows[1][1]  # today's default rule
    print(f"{args.preset}: weights {weights / 1e6:.2f} MB per version, unit_size {b}")
    print(f"{'rule':<26} {'images':>6} {'up MB':>7} {'down MB':>8} {'up B/img':>10} "
          f"{'total B/img':>12} {'vs alternating':>15} {'vs simultaneous':>16}")  # fmt: skip
    for name, images, up, down in rows:
        total = (up + down) / images
        print(
            f"{name:<26} {images:>6} {up / 1e6:>7.2f} {down / 1e6:>8.2f} {up / images:>10,.0f} "
            f"{total:>12,.0f} {alternating / total:>14.1f}x {sync / total:>15.1f}x"
        )


if __name__ == "__main__":
    main()

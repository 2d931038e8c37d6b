"""The WAN benchmark's smoke test: `benchmarks/wan.py --quick` on a fast profile (the small
model, today's default rule and the local rule, one and two workers; ~45-60 s on two busy
cores). It checks the fixed keys of the result file, the links against their profile, the
bytes per image against the payload arithmetic, and that nothing it started outlives it."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ganpool.models.dcgan import build_models
from ganpool.settings import load_run_config
from ganpool.training.state import weights_of

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FIXED_KEYS = (
    "scaling_efficiency_16",
    "scaling_efficiency_16_sync",
    "bytes_per_image_ratio",
    "compute_simulated",
    "kid_within_ci",
)


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(text in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


@pytest.mark.timeout(150)
def test_quick_wan_benchmark_reports_the_fixed_keys_and_cleans_up(tmp_path):
    out = tmp_path / "wan.json"
    fast = ["--up-mbit", "200", "--down-mbit", "400", "--rtt-ms", "4"]
    command = [sys.executable, str(ROOT / "benchmarks" / "wan.py"), "--quick", "--sizes", "1,2"]
    r = subprocess.run(
        [*command, *fast, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=140,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "COMPUTE IS SIMULATED" in r.stdout
    result = json.loads(out.read_text())

    for key in FIXED_KEYS:
        assert key in result, key
    assert result["compute_simulated"] is True
    assert isinstance(result["kid_within_ci"], bool)
    assert result["best_new_mode"] == "local-h32-int8"
    assert 0.2 < result["scaling_efficiency_16"] < 1.5
    assert 0.2 < result["scaling_efficiency_16_sync"] < 1.5
    assert result["bytes_per_image_ratio"] > 20  # about 75 by the arithmetic below

    # The links carry what the profile says, and the proxy is far from the class's need.
    check = result["link_check"]
    assert 150 < check["shaped_mbit"]["up"] <= 210
    assert 300 < check["shaped_mbit"]["down"] <= 420
    assert 3.5 < check["rtt_ms"] < 40
    assert check["proxy"]["proxied_mbit"]["down"] > check["class_needs_mbit"]

    # Bytes per image, against the arithmetic (P parameters, fp32 weights: 4P bytes).
    # The alternating rule sends one network's fp32 gradients per version (4P bytes over a
    # step) and downloads the weights at each of a step's two versions (8P), for one unit
    # of 64 images. The local rule (H = 32) sends one int8 change (about P bytes) and
    # downloads the weights once (4P) per unit of 32 x 64 images.
    cfg = load_run_config(preset="small")
    g, d = build_models(cfg.model, cfg.seed)
    p = sum(t.numel() for t in weights_of(g, d).values())
    unit = result["unit_size"]
    expected = {
        "sync-alternating": (4 * p / unit, 8 * p / unit),
        "local-h32-int8": (p / (32 * unit), 4 * p / (32 * unit)),
    }
    runs = result["runs"]
    assert [(x["mode"], x["workers"]) for x in runs] == [
        ("sync-alternating", 1),
        ("sync-alternating", 2),
        ("local-h32-int8", 1),
        ("local-h32-int8", 2),
    ]
    for run in runs:
        up, down = expected[run["mode"]]
        assert run["images_per_s"] > 0, run
        assert 0.7 * up < run["bytes_up_per_image"] < 1.6 * up, run
        assert 0.7 * down < run["bytes_down_per_image"] < 1.6 * down, run
        split = run["time_split"]
        assert sum(split.values()) == pytest.approx(1.0)
        assert split["compute"] > 0

    # Nothing it started is left: no process naming its folders, no link listening.
    for path in (result["workdir"], result["postgres_data_dir"]):
        assert not _processes_mentioning(path), path
        assert not Path(path).exists(), path
    for port in result["links_ports"]:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass

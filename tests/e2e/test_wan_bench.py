"""The WAN benchmark's smoke test: `benchmarks/wan.py --quick` on a fast profile, one and
two workers. It checks the fixed keys of the result file, that the figures are what the
payload sizes say, and that nothing the benchmark started outlives it."""

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
    # The quick run measures only today's default mode: no new mode, so no ratio.
    assert result["scaling_efficiency_16"] is None
    assert result["bytes_per_image_ratio"] is None
    assert 0.2 < result["scaling_efficiency_16_sync"] < 2.0

    # The link check measured what the profile asked for.
    check = result["link_check"]
    assert 100 < check["up_mbit"] <= 210
    assert 150 < check["down_mbit"] <= 410
    assert 3.5 < check["rtt_ms"] < 40

    # Bytes per image, against the arithmetic: the alternating rule sends one network's
    # gradients per version (both over a step: about the weights' size, fp32) and downloads
    # the weights at each of a step's two versions, for one unit of at most unit_size images.
    cfg = load_run_config(preset="small")
    g, d = build_models(cfg.model, cfg.seed)
    weights = sum(t.numel() * 4 for t in weights_of(g, d).values())
    per_image = weights / result["unit_size"]
    runs = result["runs"]
    assert [(x["mode"], x["workers"]) for x in runs] == [
        ("sync-alternating", 1),
        ("sync-alternating", 2),
    ]
    for run in runs:
        assert run["images_per_s"] > 0, run
        assert 0.7 * per_image < run["bytes_up_per_image"] < 3 * per_image, run
        assert 1.4 * per_image < run["bytes_down_per_image"] < 6 * per_image, run
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

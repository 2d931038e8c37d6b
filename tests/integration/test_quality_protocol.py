"""benchmarks/quality_protocol.py on a tiny setting: the output's shape and its arithmetic.

Two seeds, 800 images, 6 generated images per KID against 30 real faces: the figures mean
nothing, but every path of the protocol runs (training through train-local with the
reference rule and a local arm, Inception features, KID at each checkpoint, the floor,
memorisation, the paired intervals, the verdict)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "local-h8-bf16"
T_975_1 = 12.7062047  # t(0.975) with 1 degree of freedom (two seeds), from the t table


def interval_of_two(a: float, b: float) -> tuple[float, float]:
    """By hand: mean ± t · sd / √2, where sd = |a − b| / √2, so the half width is
    t · |a − b| / 2."""
    mean, half = (a + b) / 2, T_975_1 * abs(a - b) / 2
    return mean - half, mean + half


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "quality.json"
    args = ["--seeds", "3", "4", "--images", "800", "--checkpoints", "2", "--kid-samples", "6"]
    # 25 training faces x 8 = 200 images an epoch: whole units of 25 and of 8 x 25.
    args += ["--faces", "30", "--held-out", "5", "--repeat", "8", "--floor-splits", "3"]
    args += ["--out", str(out), "--arms", "alternating", LOCAL]
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality_protocol.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(out.read_text()), run.stdout


def test_the_output_holds_every_figure_the_protocol_promises(result):
    doc, stdout = result
    assert doc["complete"] is True and doc["reference"] == "alternating"
    assert doc["checkpoint_images"] == [400, 800]
    assert doc["protocol"]["seeds"] == [3, 4] and doc["protocol"]["kid_samples"] == 6
    env = doc["environment"]
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 1 and env["cpu"]
    assert len(doc["floor"]["values"]) == 3 and doc["floor"]["half_size"] == 15
    assert doc["best_local_arm"] == LOCAL and doc["arms"][LOCAL]["local_steps"] == 8
    assert set(doc["summary"]) == {"alternating", LOCAL}
    for records in doc["runs"].values():
        assert [r["seed"] for r in records] == [3, 4]
        for r in records:
            assert [p["images"] for p in r["checkpoints"]] == [400, 800]
            for p in r["checkpoints"]:
                assert p["kid_std"] > 0 and math.isfinite(p["kid"])
                for space in ("pixels", "inception"):
                    m = p[f"memorisation_{space}"]
                    assert m["ratio"] == pytest.approx(m["generated_median"] / m["held_out_median"])
                    assert 0 <= m["share_closer"] <= 1
    assert f"| {LOCAL} |" in stdout and "kid_within_ci = " in stdout


def test_the_intervals_are_the_t_intervals_of_the_per_seed_values(result):
    doc, _ = result
    ref = doc["runs"]["alternating"]
    other = doc["runs"][LOCAL]
    for i in range(2):
        a = [r["checkpoints"][i]["kid"] for r in other]
        r = [r["checkpoints"][i]["kid"] for r in ref]
        point = doc["summary"][LOCAL]["checkpoints"][i]
        assert point["kid_per_seed"] == a
        assert (point["kid"]["lo"], point["kid"]["hi"]) == pytest.approx(
            interval_of_two(*a), abs=1e-8
        )
        d = point["diff_vs_reference"]
        assert (d["lo"], d["hi"]) == pytest.approx(
            interval_of_two(a[0] - r[0], a[1] - r[1]), abs=1e-8
        )
        assert point["within_reference"] is (d["lo"] <= 0)
    assert "diff_vs_reference" not in doc["summary"]["alternating"]["checkpoints"][0]
    # The verdict is the only local arm's, at the final checkpoint.
    assert doc["kid_within_ci"] is (d["lo"] <= 0)

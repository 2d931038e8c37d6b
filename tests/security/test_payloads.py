"""What a worker sends is checked before anything is aggregated, and robust rules limit what
a malicious result can do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load

from ganpool.aggregation.robust import aggregate, grad_norm
from ganpool.coordinator import Coordinator
from ganpool.serialization.tensors import pack
from ganpool.store import connect
from tests.helpers import FakeStudent, make_run


def _header_only(_: dict) -> bytes:
    header = json.dumps({"grad.D.x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    return len(header).to_bytes(8, "little") + header.encode() + b"\x00" * 4


def _edit(fn):
    def make(tensors: dict) -> bytes:
        tensors = {k: v.clone() for k, v in tensors.items()}
        fn(tensors)
        return pack(tensors)

    return make


def _rename(t):
    t["grad.G.extra"] = t.pop("grad.G.main.0.weight")


def _reshape(t):
    t["grad.D.main.0.weight"] = t["grad.D.main.0.weight"].reshape(-1)


def _nan(t):
    t["grad.D.main.0.weight"][0, 0, 0, 0] = float("nan")


def _inf(t):
    t["grad.G.main.0.weight"][0, 0, 0, 0] = float("inf")


def _float64(t):
    t["grad.G.main.0.weight"] = t["grad.G.main.0.weight"].double()


BAD = {
    "malformed bytes": (lambda t: b"\x00\x01garbage", "not valid safetensors"),
    "json, not safetensors": (lambda t: b'{"grad": [1, 2, 3]}', "safetensors"),
    # A pickle (protocol 4) of {"grad": 1}, written out by hand: the project imports no pickle.
    "pickled object": (
        lambda t: b"\x80\x04\x95\x0c\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x04grad\x94K\x01s.",
        "safetensors",
    ),
    "wrong tensor names": (_edit(_rename), "differ from the model"),
    "missing tensors": (_header_only, "differ from the model"),
    "wrong shape": (_edit(_reshape), "expected torch.float32"),
    "wrong dtype": (_edit(_float64), "expected torch.float32"),
    "NaN": (_edit(_nan), "NaN or infinite"),
    "Inf": (_edit(_inf), "NaN or infinite"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_payloads_are_rejected_with_their_reason_and_never_applied(embedded_db, kind):
    make, reason = BAD[kind]
    run = make_run(embedded_db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    good, bad = FakeStudent(embedded_db, run, "good"), FakeStudent(embedded_db, run, "bad")
    u_good, u_bad = good.claim(), bad.claim()
    genuine = load(bad.payload(u_bad)["payload"])
    assert bad.submit(u_bad, payload=make(genuine))["accepted"]
    assert good.submit(u_good)["accepted"]
    coordinator.tick()
    assert coordinator.version == 1
    with connect(embedded_db) as conn:
        applied = conn.execute("SELECT unit_id FROM version_contributions").fetchall()
        assert [r["unit_id"] for r in applied] == [u_good["unit_id"]]
    assert reason in bad.rejections()[0], bad.rejections()
    good.close(), bad.close(), coordinator.close()


def test_oversized_payloads_are_refused_at_the_door(embedded_db):
    run = make_run(embedded_db, unit_size=10, results_per_step=1)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    s = FakeStudent(embedded_db, run, "big")
    unit = s.claim()
    verdict = s.submit(unit, payload=b"\x00" * (run.config.max_payload_bytes + 1))
    assert not verdict["accepted"]
    assert "exceeds the limit" in verdict["reason"]
    with connect(embedded_db) as conn:
        assert conn.execute("SELECT count(*) AS n FROM result_payloads").fetchone()["n"] == 0
    s.close(), coordinator.close()


def test_a_gradient_far_from_the_cohort_is_rejected_by_the_norm_check(embedded_db):
    run = make_run(embedded_db, unit_size=10, results_per_step=2)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    a, b = FakeStudent(embedded_db, run, "a"), FakeStudent(embedded_db, run, "b")
    for _ in range(5):  # 10 honest results build the reference cohort
        for s in (a, b):
            assert s.submit(s.claim())["accepted"]
        coordinator.tick()
    ua, ub = a.claim(), b.claim()
    scaled = {
        k: v * 1000 for k, v in load(b.payload(ub)["payload"]).items() if k.startswith("grad.")
    }
    honest_bufs = {k: v for k, v in load(b.payload(ub)["payload"]).items() if k.startswith("buf.")}
    assert b.submit(ub, payload=pack(scaled | honest_bufs))["accepted"]
    assert a.submit(ua)["accepted"]
    coordinator.tick()
    assert coordinator.version == 6
    assert "x the cohort's median (robust z" in b.rejections()[-1]
    with connect(embedded_db) as conn:
        last = conn.execute(
            "SELECT unit_id FROM version_contributions WHERE version = 6"
        ).fetchall()
        assert [r["unit_id"] for r in last] == [ua["unit_id"]]
    a.close(), b.close(), coordinator.close()


def _honest_results(embedded_db, n=3):
    run = make_run(embedded_db, unit_size=20, results_per_step=n)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    s = FakeStudent(embedded_db, run, "x")
    out = [load(s.payload(s.claim())["payload"]) for _ in range(n)]
    s.close(), coordinator.close()
    return out


def test_robust_rules_bound_a_1000x_result(embedded_db):
    honest = _honest_results(embedded_db)
    attacker = {k: v * 1000 if k.startswith("grad.") else v for k, v in honest[0].items()}
    weights = [(t, 20.0) for t in honest]
    honest_mean = aggregate(weights, "mean")

    def dist(a, b):
        return grad_norm({k: a[k] - b[k] for k in a if k.startswith("grad.")})

    # The plain mean is dragged ~250x away: this is what the robust rules are for.
    poisoned = aggregate([*weights, (attacker, 20.0)], "mean")
    assert grad_norm(poisoned) > 100 * grad_norm(honest_mean)

    # Trimmed mean: per coordinate the result lies within the honest results' range, so it
    # is no farther from the honest mean than their coordinate-wise envelope.
    trimmed = aggregate([*weights, (attacker, 20.0)], "trimmed_mean", trim_fraction=0.25)
    envelope = {
        k: torch.stack([(t[k] - honest_mean[k]).abs() for t in honest]).amax(0)
        for k in honest_mean
        if k.startswith("grad.")
    }
    assert dist(trimmed, honest_mean) <= grad_norm(envelope) + 1e-6
    # Clipping: every result is capped at clip_factor x the median norm, so is the mean.
    norms = sorted(grad_norm(t) for t in [*honest, attacker])
    median = (norms[1] + norms[2]) / 2
    clipped = aggregate([*weights, (attacker, 20.0)], "clip", clip_factor=2.0)
    assert grad_norm(clipped) <= 2.0 * median * (1 + 1e-6)
    median_rule = aggregate([*weights, (attacker, 20.0)], "median")
    assert dist(median_rule, honest_mean) <= grad_norm(envelope) + 1e-6

"""The local rule's weight changes on the wire: bounded error for bf16 and int8, and a
payload that does not match the manifest (or carries a bad scale) refused in one line."""

import pytest
import torch

from ganpool.coordinator.screening import Screening
from ganpool.errors import PayloadError
from ganpool.models.dcgan import build_models
from ganpool.protocol.vocabulary import Phase
from ganpool.serialization import deltas
from ganpool.serialization.tensors import Packer, manifest_of, pack
from ganpool.settings import load_run_config
from ganpool.store.worker import ClaimedUnit
from ganpool.training.gradients import result_manifest
from ganpool.training.local_steps import local_unit, payload_manifest, payload_tensors
from ganpool.training.stand_in import stand_in


def _changes(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Block-sized pieces of very different magnitudes, a zero block, and a ragged tail.
    big = torch.randn(3 * deltas.BLOCK + 17, generator=gen)
    big[: deltas.BLOCK] *= 1e-6
    big[deltas.BLOCK : 2 * deltas.BLOCK] = 0
    return {
        "grad.G.w": big,
        "grad.D.conv": torch.randn(8, 3, 4, 4, generator=gen) * 1e-3,
        "buf.D.bn.running_var": torch.rand(8, generator=gen) + 0.5,
    }


def test_int8_comes_back_within_half_a_step_of_each_block():
    sent = _changes()
    got = deltas.round_trip(sent, "int8")
    for name, t in sent.items():
        if name.startswith("buf."):
            assert torch.equal(got[name], t)  # statistics travel as they are
            continue
        flat, back = t.reshape(-1), got[name].reshape(-1)
        for start in range(0, flat.numel(), deltas.BLOCK):
            block = flat[start : start + deltas.BLOCK]
            err = (back[start : start + deltas.BLOCK] - block).abs().max()
            bound = block.abs().max() / (2 * deltas.LEVELS)
            assert err <= bound * (1 + 1e-6) + 1e-30, (name, start)
    assert torch.equal(got["grad.G.w"][deltas.BLOCK : 2 * deltas.BLOCK], torch.zeros(deltas.BLOCK))
    # The tiny block keeps its own scale: relative error as small as the big blocks'.
    tiny = sent["grad.G.w"][: deltas.BLOCK]
    rel = (got["grad.G.w"][: deltas.BLOCK] - tiny).abs().max() / tiny.abs().max()
    assert rel <= 1 / (2 * deltas.LEVELS) + 1e-6


def test_bfloat16_keeps_eight_bits_of_each_value_and_float32_is_exact():
    sent = _changes(1)
    bf16 = deltas.round_trip(sent, "bfloat16")
    for name in ("grad.G.w", "grad.D.conv"):
        t = sent[name]
        assert bf16[name].dtype == torch.float32
        assert ((bf16[name] - t).abs() <= t.abs() * 2**-8).all(), name
        assert not torch.equal(bf16[name], t)  # it did round
    assert deltas.round_trip(sent, "float32") is sent


def test_the_payload_of_each_dtype_is_checked_and_decoded_by_the_screening():
    for dtype in ("float32", "bfloat16", "int8"):
        cfg = load_run_config(overrides={"update_rule": "local", "delta_dtype": dtype})
        g, d = build_models(cfg.model, cfg.seed)
        real = torch.rand(12, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
        cfg = cfg.replace(unit_size=4, local_steps=3)
        result = local_unit(g, d, real, 7, cfg)
        blob = Packer(payload_manifest(cfg, g, d)).pack(payload_tensors(cfg, result.tensors))
        screening = Screening(0, cfg, *build_models(cfg.model, cfg.seed))
        got = screening.check(bytes(blob), "both")
        want = deltas.round_trip(result.tensors, dtype)
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), (dtype, k)
        assert any(bool(t.abs().sum() > 0) for k, t in got.items() if k.startswith("grad."))


@pytest.fixture
def int8_setup():
    cfg = load_run_config(overrides={"update_rule": "local", "delta_dtype": "int8"})
    g, d = build_models(cfg.model, cfg.seed)
    unit = ClaimedUnit(1, 0, 0, Phase.BOTH, indices=tuple(range(4)), noise_seed=1)
    result = stand_in(1e9)(g, d, None, unit, cfg)
    wire = payload_tensors(cfg, result.tensors)
    return Screening(0, cfg, g, d), wire


def _refusal(screening, tensors) -> str:
    with pytest.raises(PayloadError) as e:
        screening.check(pack(tensors), "both")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_stand_in_result_passes_and_malformed_payloads_are_refused(int8_setup):
    screening, wire = int8_setup
    screening.check(pack(wire), "both")  # the stand-in's payload is valid
    name = "grad.G.main.0.weight"
    scale = "scale.G.main.0.weight"
    without_scale = {k: v for k, v in wire.items() if k != scale}
    assert "missing ['scale.G.main.0.weight']" in _refusal(screening, without_scale)
    as_float = wire | {name: wire[name].float()}
    assert "expected torch.int8" in _refusal(screening, as_float)
    short = wire | {scale: wire[scale][:-1]}
    assert "expected torch.float32" in _refusal(screening, short)
    negative = wire | {scale: -wire[scale]}
    assert "negative or non-finite scale" in _refusal(screening, negative)
    nan = wire | {scale: torch.full_like(wire[scale], float("nan"))}
    assert "NaN or infinite" in _refusal(screening, nan)
    # A synchronous rule's payload (fp32 gradients, no scales) is not a local result.
    assert "missing" in _refusal(screening, {k: v for k, v in wire.items() if "scale" not in k})


def test_payload_sizes_shrink_by_dtype_and_decode_to_the_float32_manifest():
    cfg = load_run_config(overrides={"update_rule": "local"})
    g, d = build_models(cfg.model, cfg.seed)
    unit = ClaimedUnit(1, 0, 0, Phase.BOTH, indices=(0,), noise_seed=0)
    sizes = {}
    for dtype in ("float32", "bfloat16", "int8"):
        c = cfg.replace(delta_dtype=dtype)
        tensors = payload_tensors(c, stand_in(1e9)(g, d, None, unit, c).tensors)
        blob = bytes(Packer(payload_manifest(c, g, d)).pack(tensors))
        sizes[dtype] = len(blob)
        decoded = Screening(0, c, g, d).check(blob, "both")
        # What the aggregation takes, whatever travelled: float32 in the model's shapes.
        assert manifest_of(decoded) == result_manifest(g, d), dtype
    assert sizes["float32"] > 1.9 * sizes["bfloat16"] > 3.6 * sizes["int8"]

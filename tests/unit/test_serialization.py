import struct

import pytest
import torch

from ganpool.errors import PayloadError
from ganpool.serialization.tensors import Packer, manifest_of, pack, read_metadata, unpack


def test_round_trip_with_manifest():
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    blob = pack(t, metadata={"k": "v"})
    back = unpack(blob, manifest_of(t))
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
    assert read_metadata(blob) == {"k": "v"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"a": torch.randn(3, 5)}, "expected torch.float32 (3, 4)"),
        ({"a": torch.randn(3, 4).double()}, "expected torch.float32"),
        ({"a": torch.randn(3, 4), "x": torch.zeros(1)}, "extra ['x']"),
        ({"z": torch.zeros(1)}, "missing ['a']"),
    ],
)
def test_mismatches_are_refused(payload, message):
    with pytest.raises(PayloadError) as e:
        unpack(pack(payload), {"a": ((3, 4), torch.float32)})
    assert message in str(e.value)


def test_pickles_and_garbage_are_refused_and_size_is_limited():
    manifest = {"a": ((3, 4), torch.float32)}
    with pytest.raises(PayloadError, match="not valid safetensors"):
        unpack(b"\x80\x04\x95\x0c\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.", manifest)
    with pytest.raises(PayloadError):
        unpack(b"\x00" * 3, manifest)
    with pytest.raises(PayloadError, match="exceeds the limit"):
        unpack(pack({"a": torch.zeros(3, 4)}), manifest, max_bytes=10)


def test_packer_writes_safetensors_into_one_reused_buffer():
    t = {"w": torch.randn(4, 3), "h": torch.randn(7).half(), "n": torch.arange(3)}
    packer = Packer(manifest_of(t), metadata={"k": "v"})
    first = packer.pack(t)
    back = unpack(bytes(first), manifest_of(t))  # also what safetensors itself reads
    assert all(torch.equal(back[k], t[k]) for k in t)
    assert read_metadata(bytes(first)) == {"k": "v"}
    t2 = {k: v + 1 for k, v in t.items()}
    second = packer.pack(t2)
    assert second.obj is first.obj  # the same buffer, refilled
    assert torch.equal(unpack(bytes(second), manifest_of(t))["w"], t2["w"])
    data = sum(v.numel() * v.element_size() for v in t.values())
    (header,) = struct.unpack("<Q", bytes(second[:8]))
    assert len(second) == 8 + header + data  # no holes, nothing after the tensors


def test_packer_casts_to_the_manifest_dtype_and_refuses_other_names():
    g = {"grad": torch.randn(1000) * 1e-3}
    packer = Packer({"grad": ((1000,), torch.bfloat16)})
    back = unpack(bytes(packer.pack(g)), {"grad": ((1000,), torch.bfloat16)})["grad"]
    assert back.dtype == torch.bfloat16
    assert torch.allclose(back.float(), g["grad"], rtol=1e-2, atol=0)
    assert not torch.equal(back.float(), g["grad"])  # rounded, not passed through
    with pytest.raises(PayloadError, match="missing"):
        packer.pack({"other": torch.zeros(1000)})

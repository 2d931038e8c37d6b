import pytest
import torch

from ganpool.errors import PayloadError
from ganpool.serialization.tensors import manifest_of, pack, read_metadata, unpack


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

"""Tensors on the wire: safetensors bytes, checked against an expected manifest. Never pickle.

A manifest maps each tensor name to (shape, dtype). `unpack` refuses anything whose names,
shapes or dtypes differ from it, whose size is over the limit, or that is not safetensors.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ganpool.errors import PayloadError

Manifest = dict[str, tuple[tuple[int, ...], torch.dtype]]


def pack(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return st_save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)


def manifest_of(tensors: dict[str, torch.Tensor]) -> Manifest:
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}


def read_metadata(blob: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob, read from its JSON header only."""
    if len(blob) < 8:
        raise PayloadError("payload is not safetensors: shorter than its header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise PayloadError("payload is not safetensors: header length exceeds the payload")
    try:
        header = json.loads(blob[8 : 8 + n])
    except ValueError:
        raise PayloadError("payload is not safetensors: header is not JSON") from None
    return dict(header.get("__metadata__") or {})


def unpack(
    blob: bytes, manifest: Manifest, max_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    if max_bytes is not None and len(blob) > max_bytes:
        raise PayloadError(f"payload of {len(blob)} bytes exceeds the limit of {max_bytes}")
    try:
        tensors = st_load(bytes(blob))
    except Exception as e:  # safetensors raises its own error types for malformed input
        raise PayloadError(f"payload is not valid safetensors: {e}") from None
    missing = sorted(set(manifest) - set(tensors))
    extra = sorted(set(tensors) - set(manifest))
    if missing or extra:
        raise PayloadError(
            f"payload tensors differ from the model: missing {missing[:3]}, extra {extra[:3]}"
        )
    for name, (shape, dtype) in manifest.items():
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise PayloadError(
                f"tensor {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}"
            )
    return tensors


# safetensors' names for the dtypes we send
_DTYPE_CODES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.int8: "I8",
}


class Packer:
    """Packs one fixed set of tensors (a manifest) into a buffer allocated once and reused.

    The bytes are safetensors (header, then the tensors back to back), readable by `unpack`
    and by any safetensors reader. `pack` only copies the tensors into place, casting where the
    manifest's dtype differs (fp32 gradients sent as bf16, say): no allocation, no JSON, on
    every call after the first. The returned view is valid until the next `pack`.
    """

    def __init__(self, manifest: Manifest, metadata: dict[str, str] | None = None):
        # Widest dtypes first, so every tensor starts aligned to its element size.
        names = sorted(manifest, key=lambda k: (-manifest[k][1].itemsize, k))
        header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        layout = []
        for name in names:
            shape, dtype = manifest[name]
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            header[name] = {
                "dtype": _DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            layout.append((name, shape, dtype, offset))
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # pad so the data starts 8-byte aligned
        start = 8 + len(text)
        self.buffer = bytearray(start + offset)
        self.buffer[:start] = struct.pack("<Q", len(text)) + text
        self._views = {
            name: torch.frombuffer(
                self.buffer, dtype=dtype, count=torch.Size(shape).numel(), offset=start + at
            ).view(shape)
            for name, shape, dtype, at in layout
        }

    def pack(self, tensors: dict[str, torch.Tensor]) -> memoryview:
        if tensors.keys() != self._views.keys():
            missing = sorted(self._views.keys() - tensors.keys())
            extra = sorted(tensors.keys() - self._views.keys())
            raise PayloadError(f"cannot pack: missing {missing[:3]}, extra {extra[:3]}")
        with torch.no_grad():
            for name, view in self._views.items():
                view.copy_(tensors[name])
        return memoryview(self.buffer)

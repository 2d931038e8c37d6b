"""Weight changes on the wire: float32, bfloat16, or int8 blockwise-quantised.

The local update rule sends each parameter's change over a unit ("grad.<net>.<name>", the
outer optimiser's pseudo-gradient) in the run's `delta_dtype`; BatchNorm statistics
("buf.*", a few KB) always travel in float32.

int8 (hivemind's and bitsandbytes' blockwise scheme, symmetric): each tensor, flattened, is
cut into blocks of BLOCK values; a block's scale is its largest magnitude / 127, and each
value travels as round(value / scale) in [-127, 127]. The scales travel beside the values as
"scale.<net>.<name>" (float32, one per block), inside the same safetensors payload, so the
manifest checks them like every other tensor. Decoding multiplies back: every value comes
back within half a step (scale / 2 = its block's largest magnitude / 254) of what was sent.
"""

from __future__ import annotations

import math

import torch

from ganpool.errors import PayloadError
from ganpool.serialization.tensors import Manifest

BLOCK = 256  # values per scale: 4 bytes of scale per 256 bytes of int8 (1.6 % overhead)
LEVELS = 127  # int8 values in [-127, 127]: symmetric, so 0 is exact
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}


def _is_delta(name: str) -> bool:
    return name.startswith("grad.")


def _scale_name(name: str) -> str:
    return "scale." + name[len("grad.") :]


def blocks(numel: int) -> int:
    return math.ceil(numel / BLOCK)


def wire_manifest(manifest: Manifest, dtype: str) -> Manifest:
    """What a payload holds on the wire, given the float32 manifest of what it carries."""
    out: Manifest = {}
    for name, (shape, kind) in manifest.items():
        if not _is_delta(name):
            out[name] = (shape, kind)
            continue
        out[name] = (shape, DTYPES[dtype])
        if dtype == "int8":
            out[_scale_name(name)] = ((blocks(torch.Size(shape).numel()),), torch.float32)
    return out


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values in the tensor's shape, float32 scale per block of BLOCK values)."""
    flat = t.detach().reshape(-1).float()
    n = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, blocks(n) * BLOCK - n)).view(-1, BLOCK)
    scale = padded.abs().amax(dim=1) / LEVELS
    # An all-zero block has scale 0: divide by 1 there (its values are 0 anyway).
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(padded / safe[:, None]).clamp_(-LEVELS, LEVELS).to(torch.int8)
    return q.view(-1)[:n].view(t.shape), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    n = q.numel()
    flat = torch.nn.functional.pad(q.reshape(-1).float(), (0, scale.numel() * BLOCK - n))
    return (flat.view(-1, BLOCK) * scale[:, None]).view(-1)[:n].view(q.shape)


def encode(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """A result's float32 tensors as they travel."""
    out = {}
    for name, t in tensors.items():
        if not _is_delta(name):
            out[name] = t
        elif dtype == "int8":
            out[name], out[_scale_name(name)] = quantize_int8(t)
        else:
            out[name] = t.to(DTYPES[dtype])
    return out


def decode(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The float32 tensors a checked payload stands for. Refuses a negative or non-finite
    scale (a payload no encoder produces)."""
    out = {}
    for name, t in tensors.items():
        if name.startswith("scale."):
            continue
        if not _is_delta(name):
            out[name] = t
        elif dtype == "int8":
            scale = tensors[_scale_name(name)]
            if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
                raise PayloadError(
                    f"tensor {_scale_name(name)} holds a negative or non-finite scale"
                )
            out[name] = dequantize_int8(t, scale)
        else:
            out[name] = t.float()
    return out


def round_trip(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """What the coordinator receives of a result sent in `dtype` (train-local applies this,
    so that it matches a distributed run exactly)."""
    if dtype == "float32":
        return tensors
    return decode(encode(tensors, dtype), dtype)

"""One unit, from claim to submission, as plain functions: the worker's pipeline
(ganpool.worker.worker) runs them on its three threads.

fetch: `download_weights` (once per base version), `load_images` (none in a G phase);
compute: `start_from` the unit's version, then a `ComputeUnit` (`compute_by_rule` unless the
worker was given another); submit: `ResultPacker.pack`, `submission_of`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ganpool.models.dcgan import Discriminator, Generator
from ganpool.serialization.tensors import Manifest, Packer, unpack
from ganpool.settings import RunConfig
from ganpool.store.reconnect import CONNECTION_ERRORS
from ganpool.store.worker import ClaimedUnit, Submission, WorkerStore
from ganpool.training.gradients import UnitResult, unit_gradients
from ganpool.training.local_steps import local_unit, payload_manifest, payload_tensors
from ganpool.training.state import load_weights, reset_buffers

# What computes one unit, given the worker's networks (already on the unit's base version),
# the unit's images (None in a G phase), the claimed unit and the run's settings. The
# default trains by the run's rule; a benchmark passes a stand-in (ganpool.training.stand_in),
# a test a cheat.
ComputeUnit = Callable[
    [Generator, Discriminator, torch.Tensor | None, ClaimedUnit, RunConfig], UnitResult
]


# -- fetch -----------------------------------------------------------------------------------


def download_weights(
    store: WorkerStore, run_id: int, version: int, manifest: Manifest, pin: bool
) -> dict[str, torch.Tensor] | None:
    """A version's weights, checked against the model's manifest (page-locked with `pin`,
    for asynchronous copies to a GPU); None once the version is pruned."""
    blob = store.weights(run_id, version)
    if blob is None:
        return None
    tensors = unpack(blob, manifest)
    if pin:
        tensors = {k: v.pin_memory() for k, v in tensors.items()}
    return tensors


@dataclass(frozen=True)
class BadImage:
    """Why a unit's images would not load, naming the image where one could be found."""

    index: int | None
    reason: str


def load_images(dataset, indices: Sequence[int]) -> torch.Tensor | BadImage:
    """The unit's images, or the one that does not decode: such a unit is reported and
    given back rather than crash this worker and then the next one. A lost database is no
    bad image: it propagates (the fetcher reconnects)."""
    try:
        return dataset.batch(list(indices))
    except CONNECTION_ERRORS:
        raise
    except Exception as e:
        return _find_bad_image(dataset, indices, f"{type(e).__name__}: {e}")


def _find_bad_image(dataset, indices: Sequence[int], reason: str) -> BadImage:
    for i in indices:  # a unit has a few dozen images: try them one by one
        try:
            dataset.batch([i])
        except CONNECTION_ERRORS:
            raise
        except Exception as one:
            return BadImage(i, f"image {i}: {type(one).__name__}: {one}")
    return BadImage(None, reason)


# -- compute ---------------------------------------------------------------------------------


def start_from(
    g: Generator, d: Discriminator, weights: dict[str, torch.Tensor], reload: bool
) -> None:
    """Put both networks on the unit's base version. Without `reload` they hold its
    parameters already (the previous unit's version) and only the BatchNorm statistics,
    which a forward pass moves, go back."""
    if reload:
        load_weights(g, d, weights)
    else:
        reset_buffers(g, d, weights)


def compute_by_rule(
    g: Generator,
    d: Discriminator,
    real: torch.Tensor | None,
    unit: ClaimedUnit,
    cfg: RunConfig,
) -> UnitResult:
    """The run's rule: the local rule trains for the unit's batches and returns the weight
    change; the others return gradients on the version."""
    if cfg.update_rule == "local":
        return local_unit(g, d, real, unit.noise_seed, cfg)
    return unit_gradients(g, d, real, unit.noise_seed, cfg.nz, unit.phase, len(unit.indices))


# -- submit ----------------------------------------------------------------------------------


def submission_of(
    worker_id: int, unit: ClaimedUnit, result: UnitResult, seconds: float
) -> Submission:
    return Submission(
        worker_id=worker_id,
        unit_id=unit.unit_id,
        attempt=unit.attempt,
        g_loss=result.g_loss,
        d_loss=result.d_loss,
        d_real=result.d_real,
        d_fake=result.d_fake,
        compute_seconds=seconds,
    )


class ResultPacker:
    """Packs results into a safetensors buffer allocated once per phase, in the run's
    transport dtype (a fresh `safetensors.save` costs 6-100 ms a unit)."""

    def __init__(self, cfg: RunConfig, g: Generator, d: Discriminator):
        self.cfg, self.g, self.d = cfg, g, d
        self._packers: dict[str, Packer] = {}

    def pack(self, unit: ClaimedUnit, tensors: dict[str, torch.Tensor]) -> memoryview:
        """The payload (a view of the reused buffer: valid until the next `pack`)."""
        if unit.phase not in self._packers:
            manifest = payload_manifest(self.cfg, self.g, self.d, unit.phase)
            self._packers[unit.phase] = Packer(manifest)
        return self._packers[unit.phase].pack(payload_tensors(self.cfg, tensors))

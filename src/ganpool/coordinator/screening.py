"""Screening a step's results before anything is aggregated: payload checks, the norm check
against the cohort, and spot checks. Every refusal is recorded with its reason, and the
refused result's images go back to its epoch."""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Sequence

import torch

from ganpool.aggregation.robust import compare, grad_norm, robust_z
from ganpool.errors import PayloadError
from ganpool.models.dcgan import Discriminator, Generator
from ganpool.serialization.tensors import unpack
from ganpool.settings import RunConfig
from ganpool.store import Store
from ganpool.training.gradients import payload_limit, result_manifest

log = logging.getLogger(__name__)

PHASES = ("both", "D", "G")
# A result read and checked: its tensors and gradient norm, or why it was refused.
Arrived = tuple[dict[str, torch.Tensor], float] | PayloadError
NORM_HISTORY = 64  # accepted gradient norms remembered for the norm check
MIN_NORM_COHORT = 8  # the norm check needs at least this many norms to judge by


class Screening:
    def __init__(self, run_id: int, cfg: RunConfig, g: Generator, d: Discriminator):
        self.run_id, self.cfg = run_id, cfg
        self.manifests = {
            phase: result_manifest(g, d, phase, cfg.transport_dtype) for phase in PHASES
        }
        self.max_payload = cfg.max_payload_bytes or payload_limit(result_manifest(g, d))
        # Gradient norms differ by phase: each phase is judged against its own history.
        self.norm_history = {phase: deque(maxlen=NORM_HISTORY) for phase in PHASES}

    def reload_history(self, store: Store) -> None:
        """After a restart: the norms of the most recently applied results."""
        for phase in PHASES:
            recent = store.all("recent_norms", run_id=self.run_id, phase=phase, limit=NORM_HISTORY)
            self.norm_history[phase] = deque(
                (r["grad_norm"] for r in reversed(recent)), maxlen=NORM_HISTORY
            )

    def check(self, blob: bytes | None, phase: str) -> dict[str, torch.Tensor]:
        """A payload's tensors, or PayloadError: safetensors, the manifest, size, finite."""
        if blob is None:
            raise PayloadError("no payload was uploaded with this result")
        tensors = unpack(blob, self.manifests[phase], max_bytes=self.max_payload)
        _check_finite(tensors)
        return tensors

    def read(self, store: Store, r: dict) -> Arrived:
        """A result's checked tensors and gradient norm, or why its payload is refused."""
        blob = store.copy_out_blob("copy_result_payload", result_id=r["id"])
        try:
            tensors = self.check(blob, r["phase"])
        except PayloadError as e:
            return e
        return tensors, grad_norm(tensors)

    def screen(
        self, store: Store, rows: list[dict], arrived: dict[int, Arrived] | None = None
    ) -> tuple[list[tuple[dict, dict]], list[dict]]:
        """Validate, norm-check and spot-check a step's results. Returns the results to apply
        (with their tensors) and the rejected ones; every refusal is recorded with its reason.
        `arrived` holds payloads already read and checked as they landed (by result id)."""
        valid: dict[int, tuple[dict, dict]] = {}
        rejected: list[dict] = []
        arrived = arrived or {}
        for r in rows:
            try:
                known = arrived.get(r["id"]) or self.read(store, r)
                if isinstance(known, PayloadError):
                    raise known
            except PayloadError as e:
                self.reject(store, r, str(e))
                rejected.append(r)
                continue
            tensors, r["grad_norm"] = known
            store.execute("set_grad_norm", result_id=r["id"], grad_norm=r["grad_norm"])
            valid[r["unit_id"]] = (r, tensors)

        # Norm check: a result far from the cohort (recent history plus this step) is refused.
        phase = rows[0]["phase"] if rows else "both"
        norms = {unit_id: r["grad_norm"] for unit_id, (r, _) in valid.items()}
        if self.cfg.norm_z_max:
            history = self.norm_history[phase]
            for unit_id, ratio, z in norm_outliers(history, norms, self.cfg.norm_z_max):
                r = valid.pop(unit_id)[0]
                self.reject(
                    store,
                    r,
                    f"gradient norm {r['grad_norm']:.4g} is {ratio:.3g}x the cohort's median "
                    f"(robust z {z:.1f} on a log scale, limit {self.cfg.norm_z_max:g})",
                )
                rejected.append(r)
        # Every validated norm joins the history, refused or not: the median then follows a
        # real drift within a few steps, while a minority of outliers cannot move it.
        self.norm_history[phase].extend(norms.values())

        # Spot checks: a unit and its twin, computed by two workers, must agree.
        for unit_id, (twin, twin_tensors) in list(valid.items()):
            original_id = twin["twin_of"]
            if original_id is None:
                continue
            del valid[unit_id]  # a twin is never applied itself: it only checks the original
            if original_id not in valid:
                store.execute("verify_result", result_id=twin["id"])
                store.execute("delete_payload", result_id=twin["id"])
                continue
            original, tensors = valid[original_id]
            cosine, rel_norm = compare(tensors, twin_tensors)
            agreed = (
                cosine >= self.cfg.spot_check_cosine and rel_norm <= self.cfg.spot_check_rel_norm
            )
            store.execute(
                "record_spot_check",
                run_id=self.run_id,
                unit_id=original_id,
                twin_id=unit_id,
                worker_a=original["worker_id"],
                worker_b=twin["worker_id"],
                cosine=cosine,
                rel_norm=rel_norm,
                agreed=agreed,
            )
            # Two workers disagreeing cannot tell who is wrong: both lose trust. Only a worker
            # that has disagreed with two or more different peers can be disabled for it.
            for worker_id in {original["worker_id"], twin["worker_id"]}:
                store.execute("update_trust", worker_id=worker_id, agreed=agreed)
                if self.cfg.disable_below_trust:
                    store.execute(
                        "disable_untrusted", worker_id=worker_id, below=self.cfg.disable_below_trust
                    )
            if agreed:
                store.execute("verify_result", result_id=twin["id"])
                store.execute("delete_payload", result_id=twin["id"])
            else:
                reason = (
                    f"spot check failed: two workers computed unit {original_id} and disagreed "
                    f"(cosine {cosine:.3f}, norms differ by {rel_norm:.1%}); both results held out"
                )
                for r in (original, twin):
                    self.reject(store, r, reason)
                    rejected.append(r)
                del valid[original_id]
        return sorted(valid.values(), key=lambda rt: rt[0]["seq"]), rejected

    def reject(self, store: Store, r: dict, reason: str) -> None:
        log.warning("rejected result %d of worker %d: %s", r["id"], r["worker_id"], reason)
        store.execute("reject_result", run_id=self.run_id, result_id=r["id"], reason=reason)
        store.execute("delete_payload", result_id=r["id"])
        # A twin's images are its original's, a G unit's were counted in its D phase.
        if r.get("twin_of") is None and r.get("phase") != "G":
            store.execute("give_back", run_id=self.run_id, epoch=r["epoch"], indices=r["indices"])


def norm_outliers(
    history: Sequence[float], norms: dict[int, float], z_max: float
) -> list[tuple[int, float, float]]:
    """(key, norm / median, robust z) of this step's norms that lie too far from the
    reference (the history plus these norms), judged on log norms: a norm 1000x the median is
    far, a factor of two is not. The scale is floored at 0.25 in log units, so a very steady
    cohort does not turn brittle. Only a minority of a step's results can be refused."""
    reference = [math.log(x) for x in (*history, *norms.values()) if x > 0]
    if len(reference) < MIN_NORM_COHORT:
        return []
    median = statistics.median(reference)
    out = []
    for key, norm in norms.items():
        z = robust_z(math.log(norm), reference, min_scale=0.25) if norm > 0 else math.inf
        if z > z_max:
            out.append((key, norm / math.exp(median), z))
    # When most of a step's results jump together, the gradients moved (GAN training has
    # such spikes), not the workers: refusing them all would only stall the run. The threat
    # model is a minority of bad workers.
    if len(out) * 2 > len(norms):
        return []
    return out


def _check_finite(tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise PayloadError(f"tensor {name} holds NaN or infinite values")

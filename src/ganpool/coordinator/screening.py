"""Screening a step's results before anything is aggregated: payload checks (format, size,
finite values, BatchNorm statistics that some batch could have produced), the cohort checks
(each network's gradient norm and each BatchNorm statistic against the recent results of the
same phase), and spot checks. Of a unit and its backup copies, only the first valid result
is kept. Every refusal is recorded with its reason; the unit is then reissued or its images
go back to the epoch (the coordinator's tick does either)."""

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
from ganpool.protocol.vocabulary import PHASES, Phase, RejectionReason
from ganpool.serialization.tensors import unpack
from ganpool.settings import RunConfig
from ganpool.store.coordinator import CoordinatorStore, WaitingResult
from ganpool.training.gradients import payload_limit, result_manifest
from ganpool.training.local_steps import payload_manifest, received_tensors

log = logging.getLogger(__name__)

# A result read and checked: its tensors and the statistics the cohort checks judge
# ("norm.G", "norm.D", "bn.<buffer>": positive numbers), or why it was refused.
Arrived = tuple[dict[str, torch.Tensor], dict[str, float]] | PayloadError
NORM_HISTORY = 64  # accepted gradient norms remembered for the norm check
MIN_NORM_COHORT = 8  # the norm check needs at least this many norms to judge by
# Batch statistics move far less between batches than gradients do: at 6 (log scale, floor
# 0.25) a statistic more than e^1.5 = 4.5x away from the cohort's median is refused.
BN_Z_MAX = 6.0
BN_MOMENTUM = 0.1  # torch's BatchNorm default, which the models use
# Forward passes a result's statistics went through in train mode, from the version's: G
# once, D twice (real, then fake) before its buffers are captured (training/gradients.py).
BN_FORWARDS = {"G": 1, "D": 2}


class Screening:
    def __init__(self, run_id: int, cfg: RunConfig, g: Generator, d: Discriminator):
        self.run_id, self.cfg = run_id, cfg
        self.manifests = {phase: payload_manifest(cfg, g, d, phase) for phase in PHASES}
        # What a result's "grad.*" tensors are: the local rule sends weight changes.
        self._changes = "weight change" if cfg.update_rule == "local" else "gradient"
        self.max_payload = cfg.max_payload_bytes or payload_limit(result_manifest(g, d))
        # Statistics differ by phase and network: each (phase, statistic) is judged against
        # its own history.
        self.history: dict[tuple[str, str], deque[float]] = {}

    def _history(self, phase: str, stat: str) -> deque[float]:
        return self.history.setdefault((phase, stat), deque(maxlen=NORM_HISTORY))

    def reload_history(self, store: CoordinatorStore) -> None:
        """After a restart: the norms of the most recent results (BatchNorm statistics are
        not stored; their history builds up again within a few steps)."""
        self.history.clear()
        for phase in PHASES:
            recent = store.recent_norms(phase, NORM_HISTORY)
            for i, net in enumerate(("G", "D")):
                self._history(phase, f"norm.{net}").extend(
                    norms[i] for norms in reversed(recent) if norms[i] is not None
                )

    def check(self, blob: bytes | None, phase: str) -> dict[str, torch.Tensor]:
        """A payload's tensors, or PayloadError: safetensors, the manifest, size, finite.
        Under the local rule, the weight changes decoded to float32 (int8 scales checked)."""
        if blob is None:
            raise PayloadError(RejectionReason.NO_PAYLOAD)
        tensors = unpack(blob, self.manifests[phase], max_bytes=self.max_payload)
        _check_finite(tensors)
        return received_tensors(self.cfg, tensors)

    def read(
        self, store: CoordinatorStore, result_id: int, phase: str, prior: dict[str, torch.Tensor]
    ) -> Arrived:
        """A result's checked tensors and cohort statistics, or why its payload is refused.
        `prior` holds the BatchNorm statistics of the version the result was computed on."""
        blob = store.payload(result_id)
        # Under the local rule the statistics went through many steps of changing weights:
        # only the sign of the variances can be judged, not the batches behind them.
        if self.cfg.update_rule == "local":
            prior = {}
        try:
            tensors = self.check(blob, phase)
            stats = batchnorm_stats(tensors, prior)
        except PayloadError as e:
            return e
        for net in ("G", "D"):
            grads = {k: t for k, t in tensors.items() if k.startswith(f"grad.{net}.")}
            if grads:
                stats[f"norm.{net}"] = grad_norm(grads)
        # the whole result's norm, for the record (not judged: each network is)
        stats["norm"] = math.hypot(stats.get("norm.G", 0.0), stats.get("norm.D", 0.0))
        return tensors, stats

    def screen(
        self,
        store: CoordinatorStore,
        rows: list[WaitingResult],
        arrived: dict[int, Arrived] | None = None,
        prior: dict[str, torch.Tensor] | None = None,
    ) -> tuple[list[tuple[WaitingResult, dict]], list[WaitingResult]]:
        """Validate, cohort-check and spot-check a step's results. Returns the results to
        apply (with their tensors) and the rejected ones; every refusal is recorded with its
        reason. `arrived` holds payloads already read and checked as they landed (by result
        id); `prior` the BatchNorm statistics of the version they were computed on."""
        rejected: list[WaitingResult] = []
        valid, stats = self._validate(store, rows, arrived or {}, prior or {}, rejected)
        phase = rows[0].phase if rows else Phase.BOTH
        self._cohort_check(store, phase, valid, stats, rejected)
        self._spot_check(store, valid, rejected)
        return sorted(valid.values(), key=lambda rt: rt[0].seq), rejected

    def _validate(
        self,
        store: CoordinatorStore,
        rows: list[WaitingResult],
        arrived: dict[int, Arrived],
        prior: dict[str, torch.Tensor],
        rejected: list[WaitingResult],
    ) -> tuple[dict[int, tuple[WaitingResult, dict]], dict[int, dict[str, float]]]:
        """The results whose payload is valid, by family (the first of a unit and its
        copies), and each one's statistics; the others are refused."""
        valid: dict[int, tuple[WaitingResult, dict]] = {}
        stats: dict[int, dict[str, float]] = {}
        for r in rows:
            try:
                known = arrived.get(r.id) or self.read(store, r.id, r.phase, prior)
                if isinstance(known, PayloadError):
                    raise known
            except PayloadError as e:
                self.reject(store, r.id, r.worker_id, str(e))
                rejected.append(r)
                continue
            tensors, stats[r.id] = known
            s = stats[r.id]
            store.set_norms(r.id, s["norm"], s.get("norm.G"), s.get("norm.D"))
            if r.family in valid:
                # A backup copy's result, and one of the family was first: dropped, not
                # refused (exactly once: version_contributions.family_id is UNIQUE anyway).
                store.supersede_result(r.id)
                continue
            valid[r.family] = (r, tensors)
        return valid, stats

    def _cohort_check(
        self,
        store: CoordinatorStore,
        phase: str,
        valid: dict[int, tuple[WaitingResult, dict]],
        stats: dict[int, dict[str, float]],
        rejected: list[WaitingResult],
    ) -> None:
        """A result far from the cohort (recent history plus this step) in either network's
        gradient norm, or in a BatchNorm statistic, is refused."""
        names = sorted({k for r, _ in valid.values() for k in stats[r.id] if k != "norm"})
        for name in names:
            values = {
                fam: stats[r.id][name] for fam, (r, _) in valid.items() if name in stats[r.id]
            }
            is_norm = name.startswith("norm.")
            z_max = self.cfg.norm_z_max if is_norm else BN_Z_MAX
            history = self._history(phase, name)
            if z_max:
                for fam, ratio, z in norm_outliers(history, values, z_max):
                    r = valid.pop(fam)[0]
                    what = (
                        f"{name[5:]}'s {self._changes} norm {values[fam]:.4g}"
                        if is_norm
                        else f"BatchNorm statistic {name[3:]}"
                    )
                    self.reject(
                        store,
                        r.id,
                        r.worker_id,
                        f"{what} is {ratio:.3g}x the cohort's median "
                        f"(robust z {z:.1f} on a log scale, limit {z_max:g})",
                    )
                    rejected.append(r)
            # Every validated value joins the history, refused or not: the median then
            # follows a real drift within a few steps, while a minority cannot move it.
            history.extend(values.values())

    def _spot_check(
        self,
        store: CoordinatorStore,
        valid: dict[int, tuple[WaitingResult, dict]],
        rejected: list[WaitingResult],
    ) -> None:
        """A unit and its twin, computed by two students, must agree. A twin is never
        applied itself: it only checks the original."""
        for family, (twin, twin_tensors) in list(valid.items()):
            original_id = twin.twin_of
            if original_id is None:
                continue
            del valid[family]
            if original_id not in valid:
                store.verify_result(twin.id)
                continue
            original, tensors = valid[original_id]
            cosine, rel_norm = compare(tensors, twin_tensors)
            agreed = (
                cosine >= self.cfg.spot_check_cosine and rel_norm <= self.cfg.spot_check_rel_norm
            )
            workers = (original.worker_id, twin.worker_id)
            store.record_spot_check(original_id, twin.unit_id, workers, cosine, rel_norm, agreed)
            # Two workers disagreeing cannot tell who is wrong: both lose trust. Only a worker
            # that has disagreed with two or more different peers can be disabled for it.
            for worker_id in set(workers):
                store.update_trust(worker_id, agreed, self.cfg.disable_below_trust)
            if agreed:
                store.verify_result(twin.id)
                continue
            reason = (
                f"{RejectionReason.SPOT_CHECK_FAILED}: two workers computed unit "
                f"{original_id} and disagreed (cosine {cosine:.3f}, norms differ by "
                f"{rel_norm:.1%}); both results held out"
            )
            for r in (original, twin):
                self.reject(store, r.id, r.worker_id, reason)
                rejected.append(r)
            del valid[original_id]

    def reject(self, store: CoordinatorStore, result_id: int, worker_id: int, reason: str) -> None:
        """Refuse a result. Its unit is then reissued to another student, or its images go
        back to the epoch (the coordinator's tick: reissue_refused, give_back_unapplied)."""
        log.warning("rejected result %d of worker %d: %s", result_id, worker_id, reason)
        store.reject_result(result_id, reason)


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


def batchnorm_stats(
    tensors: dict[str, torch.Tensor], prior: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Check a result's BatchNorm statistics and summarise them for the cohort check.

    A result's running statistics are the version's, moved by its forward passes:
    r = k * prior + (1 - k) * b, with k = (1 - momentum) ** passes and b a mix of the batches'
    statistics. So b is known exactly, and a batch variance is never negative: a variance
    <= 0, or one no batch could have produced, is refused outright. Returns, per buffer, the
    root mean square of b (judged against the cohort by the caller)."""
    out: dict[str, float] = {}
    for key, t in tensors.items():
        if not key.startswith("buf."):
            continue
        is_var = key.endswith("running_var")
        if is_var and not bool((t > 0).all()):
            raise PayloadError(f"BatchNorm statistic {key[4:]} holds a variance <= 0")
        if key not in prior:
            continue
        keep = (1 - BN_MOMENTUM) ** BN_FORWARDS[key.split(".")[1]]
        before = prior[key].double()
        batch = (t.double() - keep * before) / (1 - keep)
        if is_var and bool((batch < -1e-4 * (before.abs() + 1)).any()):
            raise PayloadError(
                f"BatchNorm statistic {key[4:]} cannot come from any batch of this version "
                "(it implies a negative batch variance)"
            )
        out[f"bn.{key[4:]}"] = float(batch.square().mean().sqrt()) + 1e-12
    return out


def _check_finite(tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise PayloadError(f"tensor {name} holds NaN or infinite values")

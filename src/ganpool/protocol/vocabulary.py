"""The protocol's words: what the database stores in its status, state and phase columns,
and how a person's "step" relates to the database's "version".

Each enum's values are exactly those the schema's CHECK constraints allow
(tests/integration/test_vocabulary.py compares them with a migrated database), and each is a
`str`, so a member goes into a query parameter, a dict key or an f-string as its value.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """`runs.status`: where a run is in its life."""

    CREATED = "created"  # made by `run create`; no coordinator has started it yet
    RUNNING = "running"  # workers claim units and the coordinator steps
    PAUSED = "paused"  # claims stop until `run resume`; units already held may still land
    FINISHED = "finished"  # a stopping limit (steps, epochs or time) was reached: over
    STOPPED = "stopped"  # the instructor ended it by hand (`run stop`): over


# A run that is over never runs again (runs.CONTROLS never leaves these).
RUN_OVER = (RunStatus.FINISHED, RunStatus.STOPPED)


class Phase(StrEnum):
    """`work_units.phase`: what a unit's worker computes (docs/protocol.md, its update rules)."""

    BOTH = "both"  # the simultaneous rule: D's and G's gradients on one version
    D = "D"  # the alternating rule's first half: D's gradients, on the step's first version
    G = "G"  # its second half: G's gradients through the just-stepped D, same images and noise


PHASES = tuple(Phase)


class UnitState(StrEnum):
    """`work_units.state`: a unit's place in the queue."""

    PENDING = "pending"  # waiting for a worker to claim it
    CLAIMED = "claimed"  # a worker holds it under a lease (heartbeats extend it)
    SUBMITTED = "submitted"  # its result is in and awaits the step
    APPLIED = "applied"  # its result went into a published version
    REJECTED = "rejected"  # its result was refused (the reason is in `rejections`)
    CANCELLED = "cancelled"  # its version moved on without it: its images went back
    QUARANTINED = "quarantined"  # several students could not compute it: set aside


class ResultStatus(StrEnum):
    """`results.status`: what became of a submitted result."""

    SUBMITTED = "submitted"  # uploaded, waiting for its step
    APPLIED = "applied"  # averaged into a published version
    VERIFIED = "verified"  # a spot-check twin that agreed with its original (never applied)
    REJECTED = "rejected"  # refused by screening, or stale (the reason is in `rejections`)
    SUPERSEDED = "superseded"  # valid, but another copy of its unit was applied first


class RejectionReason(StrEnum):
    """What a refusal is about (`rejections.reason`, or the reason a submission is turned
    away with): every reason starts with one of these, then carries its detail ("stale:
    computed on version 4 but ..."); a member whose text needs no detail is the whole reason.
    No member starts another, so a reason names one family (tests/unit/test_rejections.py
    reads every reason the code writes; tests/integration/test_vocabulary.py the database's)."""

    # Refused by the database when the result is submitted (ganpool_submit_begin, _submit).
    STALE = "stale"  # computed on a version the run has moved past (the coordinator too)
    LEASE_LOST = "lease lost"  # the unit was reissued after the lease ran out
    UNIT_NOT_OPEN = "unit"  # the unit does not exist, or is already submitted or decided
    RUN_NOT_RUNNING = "the run has"  # the run is over or not started ("the run has stopped")
    PAYLOAD_TOO_LARGE = "payload of"  # more bytes than the run allows (the coordinator too)
    # Refused by the coordinator's screening, or when the run ends.
    NO_PAYLOAD = "no payload was uploaded with this result"  # the row came, its bytes did not
    NOT_SAFETENSORS = "payload is not"  # not a safetensors file that can be read
    WRONG_TENSORS = "payload tensors differ from the model"  # tensors missing or extra
    BAD_TENSOR = "tensor"  # wrong dtype or shape, NaN or infinite values, a bad int8 scale
    BATCHNORM_STATISTIC = "BatchNorm statistic"  # no batch could give it, or far from the cohort
    G_NORM_OUTLIER = "G's"  # G's gradient (or weight change) norm far from the cohort's
    D_NORM_OUTLIER = "D's"  # the same for D
    SPOT_CHECK_FAILED = "spot check failed"  # two students computed one unit and disagreed
    RUN_ENDED = "the run ended before this result could be applied"  # it was never stepped


def version_to_step(version: int, versions_per_step: int, *, started: bool = False) -> int:
    """The paper's steps (what a person reads as "step") completed once `version` is
    published; with `started`, the step `version` belongs to, counting a step whose first
    half (a D phase) alone is published. A run publishes `versions_per_step` versions a step
    (RunConfig.versions_per_step: 2 under the alternating rule); version 0 is the start."""
    done = max(0, version)
    if started:
        done += versions_per_step - 1
    return done // versions_per_step


def step_to_version(step: int, versions_per_step: int) -> int:
    """The version that completes `step` (the inverse of `version_to_step`); also the number
    of versions `step` steps take."""
    return step * versions_per_step

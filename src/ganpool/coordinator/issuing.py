"""Unit issuing: a version's units from the epoch permutation, spot-check twins, backup copies
of stragglers, reissues of refused units, and poison units set aside. Everything here runs
inside the tick's transaction (ganpool.coordinator.round)."""

from __future__ import annotations

import logging

from ganpool.protocol.schedule import EpochState, plan_units, spot_check_chosen
from ganpool.protocol.vocabulary import Phase
from ganpool.runs import Run
from ganpool.settings import RunConfig
from ganpool.store.coordinator import CoordinatorStore

log = logging.getLogger(__name__)

MAX_COPIES = 4  # backup or reissued copies of one unit, at most
BACKUP_MIN_S = 1.0  # never copy a unit held for less than this


def issue_units(store: CoordinatorStore, run: Run, version: int) -> None:
    """Bring the version's live units up to units_per_step (a G phase: its D units)."""
    cfg = run.config
    phase = cfg.phase_of(version)
    if phase == Phase.G:  # the G phase redoes the D phase's units, images and noise
        for g in store.insert_g_units(version):
            # G-phase units are spot-checked too (they are every generator update).
            if spot_check_chosen(cfg.seed, g.noise_seed, cfg.spot_check_rate):
                store.insert_twin(g.id)
        return
    count = cfg.units_issued_per_step - store.count_live_units(version)
    if count <= 0:
        return
    issued = store.lock_run().units_issued
    epochs = [
        EpochState(e.epoch, e.seed, e.size, e.cursor, list(e.returned)) for e in store.open_epochs()
    ]
    before = {e.epoch for e in epochs}
    last = store.last_epoch()
    units = plan_units(
        epochs,
        0 if last is None else last + 1,
        count,
        cfg.unit_images,
        cfg.seed,
        run.dataset_size,
        issued,
        store.quarantined_images(),
    )
    for e in epochs:
        if e.epoch not in before:
            store.insert_epoch(e.epoch, e.seed, e.size)
        store.save_epoch(e.epoch, e.cursor, e.returned)
        if e.skipped:  # quarantined images met again: done for this epoch, not trained
            store.quarantine_images(e.epoch, e.skipped)
    for u in units:
        unit_id = store.insert_unit(u.seq, version, u.epoch, u.indices, u.noise_seed, phase)
        if spot_check_chosen(cfg.seed, u.seq, cfg.spot_check_rate):
            store.insert_twin(unit_id)
    store.set_units_issued(issued + len(units))


def issue_ahead(store: CoordinatorStore, run: Run, version: int) -> None:
    """The local rule's delayed outer step: the next round's units (computed on `version`)
    are out while this round's results still come in, so no worker waits for a step. Not
    past max_steps: that round could never be applied."""
    c = run.config
    if c.update_rule != "local" or not c.outer_delay:
        return
    if c.max_steps and version + 1 >= c.max_steps:
        return
    issue_units(store, run, version + 1)


def patience(store: CoordinatorStore, cfg: RunConfig) -> float:
    """How long a unit may be held before it gets a backup copy: `backup_after` times the
    run's recent time per unit (claim to submission), while there is no history a quarter
    of the lease, and at least BACKUP_MIN_S."""
    if not cfg.backup_after:
        return cfg.lease_s
    recent = store.recent_units()
    if recent.n < 3 or recent.seconds is None:
        return max(BACKUP_MIN_S, cfg.lease_s / 4)
    return min(cfg.lease_s, max(BACKUP_MIN_S, cfg.backup_after * recent.seconds))


def copy_units(store: CoordinatorStore, cfg: RunConfig, v: int, patience: float) -> None:
    """Backup copies of the version's stragglers, reissues of units refused everywhere, and
    dropping copies that no one could claim."""
    store.abandon_unclaimed_copies(v, patience)
    reissued = store.reissue_refused(v, MAX_COPIES)
    if reissued:
        log.info("version %d: reissuing %d refused unit(s) to other students", v, reissued)
    if cfg.backup_after:
        copied = store.issue_backups(v, patience, MAX_COPIES)
        if copied:
            log.info("version %d: backup copies of %d unit(s) held over %.1fs", v, copied, patience)


def quarantine(store: CoordinatorStore, cfg: RunConfig) -> None:
    """Set aside units that `quarantine_after` students could not compute; their other
    images go back to the epoch, the ones reported bad count as done."""
    for u in store.quarantine_units(cfg.quarantine_after):
        named = u.bad or "all"
        log.warning("quarantined unit %d: workers could not compute images %s", u.id, named)
        if u.images_returned or u.twin_of is not None or u.phase == Phase.G:
            continue  # no images of its own to account for
        bad = set(u.bad) or set(u.indices)  # no image named: the whole unit
        good = [i for i in u.indices if i not in bad]
        if good:
            store.give_back(u.epoch, good)
        store.quarantine_images(u.epoch, len(u.indices) - len(good))
        store.mark_images_returned(u.id)

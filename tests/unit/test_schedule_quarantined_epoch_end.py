"""An epoch whose last images are all quarantined ends there: planning goes on in the next
epoch and still returns every unit asked for (a short plan would leave workers idle), and
the epoch counts the images it passed over (the coordinator records them as quarantined)."""

from __future__ import annotations

from ganpool.protocol.schedule import EpochState, epoch_seed, permutation, plan_units


def test_an_epoch_ending_in_quarantined_images_does_not_cut_the_plan_short():
    run_seed, size = 7, 4
    order = permutation(epoch_seed(run_seed, 0), size)
    skip = frozenset(order[2:])  # epoch 0's last two images
    epochs: list[EpochState] = []
    units = plan_units(
        epochs, 0, 3, unit_size=2, run_seed=run_seed, dataset_size=size, first_seq=0, skip=skip
    )
    assert [u.seq for u in units] == [0, 1, 2]
    assert [u.epoch for u in units] == [0, 1, 2]
    assert units[0].indices == list(order[:2])
    assert all(sorted(u.indices) == sorted(set(range(size)) - skip) for u in units)
    assert epochs[0].skipped == 2 and epochs[0].remaining == 0

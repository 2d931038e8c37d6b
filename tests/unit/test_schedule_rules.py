"""The schedule's smaller rules: spot-check draws, seed streams, epochs' bookkeeping."""

import pytest

from ganpool.protocol.schedule import (
    EpochState,
    epoch_seed,
    noise_seed,
    permutation,
    plan_units,
    sample_seed,
    spot_check_chosen,
)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 1.0])
def test_spot_checks_pick_about_their_rate_of_units_and_always_the_same_ones(rate):
    chosen = [spot_check_chosen(7, seq, rate) for seq in range(4000)]
    assert abs(sum(chosen) / 4000 - rate) < 0.03
    assert chosen == [spot_check_chosen(7, seq, rate) for seq in range(4000)]
    if 0 < rate < 1:
        assert chosen != [spot_check_chosen(8, seq, rate) for seq in range(4000)]


def test_seed_streams_are_separate_and_fit_62_bits():
    seeds = {epoch_seed(3, 0), noise_seed(3, 0), sample_seed(3), epoch_seed(4, 0)}
    assert len(seeds) == 4
    assert all(0 <= s < 2**62 for s in seeds)
    assert sample_seed(3) == sample_seed(3)


def test_an_epoch_hands_out_given_back_images_first_then_its_permutation():
    e = EpochState.start(run_seed=1, epoch=2, size=10)
    assert (e.epoch, e.seed, e.remaining) == (2, epoch_seed(1, 2), 10)
    order = list(permutation(e.seed, 10))
    assert sorted(order) == list(range(10))
    assert e.take(4) == order[:4] and e.remaining == 6
    e.give_back([order[1], order[3]])
    e.give_back([order[0]])
    assert e.remaining == 9
    assert e.take(2) == [order[1], order[3]]  # given back, in the order they came back
    assert e.returned == [order[0]]
    assert e.take(3) == [order[0], *order[4:6]]
    assert e.take(10) == order[6:] and e.remaining == 0
    assert e.take(3) == []


def test_planned_units_number_on_from_the_given_sequence_and_epoch():
    epochs: list[EpochState] = []
    units = plan_units(epochs, 5, count=3, unit_size=40, run_seed=2, dataset_size=100, first_seq=11)
    assert [u.seq for u in units] == [11, 12, 13]
    assert [u.epoch for u in units] == [5, 5, 5]
    assert [len(u.indices) for u in units] == [40, 40, 20]
    assert [u.noise_seed for u in units] == [noise_seed(2, s) for s in (11, 12, 13)]
    assert [e.epoch for e in epochs] == [5]
    more = plan_units(epochs, 6, 1, 40, 2, 100, 14)
    assert more[0].epoch == 6 and [e.epoch for e in epochs] == [5, 6]


def test_one_call_can_open_several_epochs_and_a_last_single_image_is_still_issued():
    epochs: list[EpochState] = []
    units = plan_units(epochs, 0, count=5, unit_size=50, run_seed=2, dataset_size=100, first_seq=0)
    assert [u.epoch for u in units] == [0, 0, 1, 1, 2]
    assert [e.epoch for e in epochs] == [0, 1, 2]
    # 33 x 3 leaves one image: it makes a unit of its own before the next epoch opens.
    epochs = []
    units = plan_units(epochs, 0, count=5, unit_size=33, run_seed=2, dataset_size=100, first_seq=0)
    assert [(u.epoch, len(u.indices)) for u in units] == [
        (0, 33),
        (0, 33),
        (0, 33),
        (0, 1),
        (1, 33),
    ]


@pytest.mark.timeout(10)  # the bug this guards against is an endless loop
def test_quarantined_images_are_never_planned_and_all_of_them_is_a_clear_error():
    # With every image skipped no epoch could ever yield a unit: planning would open epochs
    # for ever, so it refuses at once.
    epochs: list[EpochState] = []
    skip = frozenset(range(1, 10))  # one image of ten left
    units = plan_units(
        epochs, 0, 3, unit_size=4, run_seed=2, dataset_size=10, first_seq=0, skip=skip
    )
    assert [u.indices for u in units] == [[0], [0], [0]]
    with pytest.raises(ValueError, match=r"^every image of the dataset is quarantined$"):
        plan_units([], 0, 1, 4, 2, 10, 0, skip=frozenset(range(10)))

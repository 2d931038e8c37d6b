from ganpool.protocol.schedule import EpochState, noise_seed, plan_units


def test_one_epoch_uses_every_index_exactly_once():
    epochs: list[EpochState] = []
    units = plan_units(epochs, 0, count=4, unit_size=30, run_seed=3, dataset_size=100, first_seq=0)
    assert [len(u.indices) for u in units] == [30, 30, 30, 10]  # the last unit of an epoch is short
    assert {u.epoch for u in units} == {0}
    seen = [i for u in units for i in u.indices]
    assert sorted(seen) == list(range(100))
    nxt = plan_units(epochs, 1, count=1, unit_size=30, run_seed=3, dataset_size=100, first_seq=4)
    assert nxt[0].epoch == 1
    assert nxt[0].indices != units[0].indices  # a new permutation for a new epoch


def test_given_back_images_are_issued_before_fresh_ones_and_stay_in_their_epoch():
    epochs: list[EpochState] = []
    first = plan_units(epochs, 0, 4, 25, 0, 100, 0)
    epochs[0].give_back(first[2].indices)
    again = plan_units(epochs, 1, 1, 25, 0, 100, 4)
    assert again[0].epoch == 0
    assert again[0].indices == first[2].indices
    assert again[0].noise_seed != first[2].noise_seed  # a new unit draws new noise


def test_seeds_are_deterministic_and_distinct():
    assert noise_seed(1, 5) == noise_seed(1, 5)
    assert len({noise_seed(1, i) for i in range(1000)}) == 1000
    assert 0 <= noise_seed(2**40, 10**9) < 2**62

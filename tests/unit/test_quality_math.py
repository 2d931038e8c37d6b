import numpy as np

from ganpool.evaluation.quality import fid, kid


def test_kid_and_fid_are_near_zero_for_one_distribution_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(400, 16))
    shifted = rng.normal(loc=0.7, size=(400, 16))
    same, spread = kid(a, b, subset_size=100)
    far, _ = kid(a, shifted, subset_size=100)
    assert abs(same) < 3 * spread + 1e-3
    assert far > 10 * max(abs(same), 1e-4)
    assert spread > 0
    assert fid(a, b) < 0.5 < fid(a, shifted)
    assert abs(fid(a, shifted) - 16 * 0.49) < 1.5  # |mu difference|^2 dominates


def test_the_norm_check_flags_a_1000x_result_but_not_a_drift():
    from ganpool.coordinator.screening import norm_outliers

    rng = np.random.default_rng(0)
    history = list(50 + rng.normal(0, 3, size=64))
    assert [k for k, _, _ in norm_outliers(history, {1: 52.0, 2: 50000.0}, 6.0)] == [2]
    assert [k for k, _, _ in norm_outliers(history, {1: 52.0, 2: 0.0}, 6.0)] == [2]
    assert [k for k, _, _ in norm_outliers(history, {1: 52, 2: 55, 3: 800}, 6.0)] == [3]
    # GAN gradients drift, and spike: twice the median is not an attack ...
    assert norm_outliers(history, {1: 97.0, 2: 48.0}, 6.0) == []
    # ... nor is a whole step jumping together, even twentyfold.
    assert norm_outliers(history, {1: 1000.0, 2: 1010.0}, 6.0) == []
    assert norm_outliers(history[:3], {1: 5000.0}, 6.0) == []  # too few norms to judge


def test_the_history_follows_a_real_shift():
    from collections import deque

    from ganpool.coordinator.screening import NORM_HISTORY, norm_outliers

    history = deque([50.0] * NORM_HISTORY, maxlen=NORM_HISTORY)
    for _ in range(40):  # the whole cohort's norms are now 20x the old ones
        history.extend([1000.0, 1010.0])  # refused or not, every norm joins the history
    # A single result at the old scale is now the odd one out.
    assert [k for k, _, _ in norm_outliers(history, {1: 1005.0, 2: 50.0, 3: 990.0}, 6.0)] == [2]

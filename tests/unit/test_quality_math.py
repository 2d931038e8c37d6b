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

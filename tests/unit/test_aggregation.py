"""Each aggregation rule against results worked out by hand, with unequal sample counts.

Unit sizes that divide the dataset give every result the same weight, where a plain mean and
the weighted mean agree. Here the weights differ (30, 30 and 10: unit_size 30 on 100 faces), so
a rule that drops or misplaces a weight gives a different number."""

import pytest
import torch

from ganpool.aggregation.robust import aggregate, compare, flat_grads, grad_norm, robust_z
from ganpool.training.state import WeightedMean


def result(grad: list[float], buf: list[float]) -> dict[str, torch.Tensor]:
    return {"grad.G.w": torch.tensor(grad), "buf.D.m": torch.tensor(buf)}


def test_the_weighted_mean_weights_each_result_by_its_samples():
    mean = WeightedMean()
    mean.add(result([1.0, 2.0], [0.5]), 30.0)
    mean.add(result([3.0, -2.0], [1.5]), 30.0)
    mean.add(result([10.0, 0.0], [8.0]), 10.0)
    out = mean.mean()
    # (30*1 + 30*3 + 10*10) / 70, (30*2 - 30*2 + 0) / 70, (15 + 45 + 80) / 70
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([22 / 7, 0.0]))
    torch.testing.assert_close(out["buf.D.m"], torch.tensor([2.0]))
    assert out["grad.G.w"].dtype == torch.float32
    assert mean.weight == 70.0


def test_the_weighted_mean_is_the_same_in_any_order_and_starts_afresh_after_reset():
    parts = [(result([1.0, 2.0], [0.5]), 30.0), (result([10.0, 0.0], [8.0]), 10.0)]
    forward, backward = WeightedMean(), WeightedMean()
    for tensors, w in parts:
        forward.add(tensors, w)
    for tensors, w in reversed(parts):
        backward.add(tensors, w)
    for k, v in forward.mean().items():
        assert torch.equal(v, backward.mean()[k])

    forward.reset()
    assert forward.weight == 0.0
    forward.add({"grad.G.w": torch.tensor([4.0, 6.0])}, 5.0)  # a phase without buffers
    out = forward.mean()
    assert set(out) == {"grad.G.w"}, "keys of the previous step leaked into this one"
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([4.0, 6.0]))


def test_the_mean_rule_is_the_weighted_mean_for_gradients_and_buffers():
    out = aggregate(
        [
            (result([1.0, 2.0], [0.5]), 30.0),
            (result([3.0, -2.0], [1.5]), 30.0),
            (result([10.0, 0.0], [8.0]), 10.0),
        ],
        "mean",
    )
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([22 / 7, 0.0]))
    torch.testing.assert_close(out["buf.D.m"], torch.tensor([2.0]))


def test_clip_scales_a_large_gradient_to_the_cap_then_takes_the_weighted_mean():
    # Norms 5, 1 and 2: median 2, cap 2 x 2 = 4, so the first gradient is scaled by 4/5.
    results = [
        (result([3.0, 4.0], [1.0]), 30.0),
        (result([0.0, 1.0], [5.0]), 30.0),
        (result([0.0, -2.0], [3.0]), 10.0),
    ]
    out = aggregate(results, "clip", clip_factor=2.0)
    # (30*[2.4, 3.2] + 30*[0, 1] + 10*[0, -2]) / 70
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([72 / 70, 106 / 70]))
    torch.testing.assert_close(out["buf.D.m"], torch.tensor([3.0]))  # buffers: the median
    # A cap above every norm leaves the plain weighted mean.
    loose = aggregate(results, "clip", clip_factor=10.0)
    torch.testing.assert_close(loose["grad.G.w"], torch.tensor([90 / 70, 130 / 70]))


def test_clip_leaves_a_zero_gradient_alone():
    results = [(result([0.0, 0.0], [1.0]), 30.0), (result([0.0, 2.0], [3.0]), 10.0)]
    out = aggregate(results, "clip", clip_factor=1.0)
    # Norms 0 and 2: median 1, cap 1; the second is scaled to norm 1. Two buffers: their mean.
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([0.0, 10 / 40]))
    torch.testing.assert_close(out["buf.D.m"], torch.tensor([2.0]))


def test_trimmed_mean_drops_the_extremes_of_each_coordinate():
    # Five results, trim 0.25: one value off each end of every coordinate, whatever the
    # weights (the rule treats every result alike).
    grads = [[1.0, 50.0], [2.0, -9.0], [6.0, 0.0], [100.0, 1.0], [-7.0, 4.0]]
    results = [
        (result(g, [float(i)]), w)
        for i, (g, w) in enumerate(zip(grads, [30, 30, 10, 5, 1], strict=True))
    ]
    out = aggregate(results, "trimmed_mean", trim_fraction=0.25)
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([3.0, 5 / 3]))  # (1+2+6)/3, (0+1+4)/3
    torch.testing.assert_close(out["buf.D.m"], torch.tensor([2.0]))  # median of 0..4
    # A larger fraction trims more: 0.4 of 5 drops two from each end, leaving the median.
    more = aggregate(results, "trimmed_mean", trim_fraction=0.4)
    torch.testing.assert_close(more["grad.G.w"], torch.tensor([2.0, 1.0]))
    # Six results at 0.25: int(1.5) = 1 from each end.
    six = [*results, (result([4.0, 3.0], [5.0]), 30.0)]
    out6 = aggregate(six, "trimmed_mean", trim_fraction=0.25)
    torch.testing.assert_close(out6["grad.G.w"], torch.tensor([13 / 4, 2.0]))


def test_trimmed_mean_trims_at_least_one_of_three_and_none_of_two():
    three = [(result([1.0, 0.0], [1.0]), 30), (result([2.0, 9.0], [2.0]), 30)]
    three.append((result([30.0, 3.0], [9.0]), 10))
    out = aggregate(three, "trimmed_mean", trim_fraction=0.1)  # int(0.3) = 0, raised to 1
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([2.0, 3.0]))
    two = aggregate(three[:2], "trimmed_mean", trim_fraction=0.25)  # nothing can be trimmed
    torch.testing.assert_close(two["grad.G.w"], torch.tensor([1.5, 4.5]))
    torch.testing.assert_close(two["buf.D.m"], torch.tensor([1.5]))


def test_trimmed_mean_always_keeps_the_middle():
    three = [(result([1.0, 0.0], [1.0]), 30), (result([2.0, 9.0], [2.0]), 30)]
    three.append((result([30.0, 3.0], [9.0]), 10))
    # int(3 x 0.9) = 2 from each end would leave nothing: capped at one, the median.
    out = aggregate(three, "trimmed_mean", trim_fraction=0.9)
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([2.0, 3.0]))
    # Four at 0.5: capped at one from each end, the middle two averaged.
    four = [*three, (result([4.0, -1.0], [0.0]), 30)]
    out = aggregate(four, "trimmed_mean", trim_fraction=0.5)
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([3.0, 1.5]))


def test_median_is_taken_per_coordinate():
    results = [
        (result([1.0, 9.0], [4.0]), 30.0),
        (result([5.0, -1.0], [0.0]), 30.0),
        (result([3.0, 2.0], [7.0]), 10.0),
    ]
    out = aggregate(results, "median")
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(out["buf.D.m"], torch.tensor([4.0]))
    # Two results have no middle one: their plain mean.
    two = aggregate(results[:2], "median")
    torch.testing.assert_close(two["grad.G.w"], torch.tensor([3.0, 4.0]))


def test_norms_and_comparisons_by_hand():
    a = {
        "grad.G.w": torch.tensor([3.0, 0.0]),
        "grad.D.w": torch.tensor([4.0]),
        "buf.D.m": 9 + torch.zeros(1),
    }
    assert grad_norm(a) == pytest.approx(5.0)  # buffers are not gradients
    torch.testing.assert_close(flat_grads(a), torch.tensor([4.0, 3.0, 0.0]))  # sorted by name
    b = {"grad.G.w": torch.tensor([0.0, 6.0]), "grad.D.w": torch.tensor([8.0])}
    cosine, rel = compare(a, b)
    assert cosine == pytest.approx(32 / 50) and rel == pytest.approx(0.5)
    zero = {"grad.G.w": torch.zeros(2), "grad.D.w": torch.zeros(1)}
    assert compare(zero, zero) == (1.0, 0.0)
    assert compare(zero, b) == (0.0, 1.0)
    unit = {"grad.G.w": torch.tensor([1.0, 0.0]), "grad.D.w": torch.tensor([0.0])}  # norm 1
    cosine, rel = compare(a, unit)
    assert cosine == pytest.approx(3 / 5) and rel == pytest.approx(0.8)
    # Median 3, MAD 1: z = |7 - 3| / 1.4826.
    assert robust_z(7.0, [2.0, 3.0, 4.0]) == pytest.approx(4 / 1.4826)
    assert robust_z(5.0, [3.0, 3.0, 3.0], min_scale=0.5) == pytest.approx(4.0)
    assert robust_z(5.0, [3.0, 3.0, 3.0]) == pytest.approx(2e12)  # the default floor, 1e-12


@pytest.mark.parametrize("rule", ["mean", "clip", "trimmed_mean", "median"])
def test_every_rule_takes_a_step_of_one_result_as_it_is(rule):
    # A step past its deadline may hold a single result.
    one = result([3.0, -4.0], [0.5])
    out = aggregate([(one, 10.0)], rule)
    for key, value in one.items():
        torch.testing.assert_close(out[key], value, msg=key)


def test_clip_scales_small_gradients_too():
    # Norms 0.1, 0.1 and 0.9: the cap is 2 x 0.1 = 0.2, below 1 but still a cap.
    results = [(result([0.1, 0.0], [1.0]), 10.0), (result([0.1, 0.0], [1.0]), 10.0)]
    results.append((result([0.0, 0.9], [1.0]), 10.0))
    out = aggregate(results, "clip", clip_factor=2.0)
    torch.testing.assert_close(out["grad.G.w"], torch.tensor([0.2 / 3, 0.2 / 3]))

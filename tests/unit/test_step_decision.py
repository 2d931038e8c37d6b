"""When the round steps, and on how many units' results (`Round._needed`): N results in and no
spot check still computing, a G phase capped by the units it has left, and the step
deadline."""

from types import SimpleNamespace

import pytest

from ganpool.coordinator.round import Round
from ganpool.settings import RunConfig
from ganpool.store.coordinator import RunRow, Waiting


def needed(version, *, n, open_=4, twins=0, age=0.25, **config):
    # The decision reads only the run's settings.
    cfg = RunConfig(results_per_step=3, **config)
    run = RunRow("running", version, units_issued=0, version_age_s=age, running_s=age)
    return Round._needed(SimpleNamespace(cfg=cfg), run, Waiting(open_, n, twins))


def test_a_d_phase_steps_once_n_results_are_in_and_no_spot_check_is_computing():
    assert needed(0, n=2) is None
    assert needed(0, n=3) == 3
    assert needed(0, n=4) == 3
    assert needed(0, n=3, twins=1) is None
    assert needed(0, n=0) is None


def test_a_g_phase_needs_no_more_results_than_it_has_units_left():
    assert needed(1, n=2, open_=2) == 2
    assert needed(1, n=1, open_=2) is None
    assert needed(1, n=3, open_=5) == 3
    assert needed(0, n=2, open_=2) is None  # a D phase is not capped
    assert needed(1, n=2, open_=2, update_rule="simultaneous") is None  # nor is a both phase


@pytest.mark.parametrize(
    ("deadline", "age", "n", "expected"),
    [
        (5.0, 4.99, 1, None),
        (5.0, 5.0, 1, 1),  # the deadline counts as passed the moment it is reached
        (5.0, 7.5, 1, 1),
        (5.0, 7.5, 3, 1),  # past it, the step takes what is there, one unit's result at least
        (5.0, 7.5, 0, None),
        (0.5, None, 1, None),  # a version with no start time has no deadline to pass
        (0.5, 0.0, 1, None),
        (0.5, 0.5, 1, 1),
    ],
)
def test_the_step_deadline_steps_on_what_is_there(deadline, age, n, expected):
    assert needed(0, n=n, age=age, step_deadline_s=deadline) == expected


def test_no_deadline_waits_for_n_results_however_long_it_takes():
    assert needed(0, n=2, age=10_000.0, step_deadline_s=0.0) is None

import pytest

from ganpool.protocol.vocabulary import PHASES, Phase, step_to_version, version_to_step
from ganpool.settings import RunConfig


@pytest.mark.parametrize(
    ("version", "done", "started"),
    # alternating: version 1 is step 1's D phase, version 2 completes it
    [(-1, 0, 0), (0, 0, 0), (1, 0, 1), (2, 1, 1), (3, 1, 2), (4, 2, 2)],
)
def test_versions_to_steps_under_the_alternating_rule(version, done, started):
    assert version_to_step(version, 2) == done
    assert version_to_step(version, 2, started=True) == started


def test_one_version_per_step_under_the_simultaneous_rule():
    assert [version_to_step(v, 1) for v in range(4)] == [0, 1, 2, 3]
    assert [version_to_step(v, 1, started=True) for v in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize("per_step", [1, 2])
def test_step_to_version_inverts_version_to_step(per_step):
    for step in range(6):
        version = step_to_version(step, per_step)
        assert version_to_step(version, per_step) == step
        assert version_to_step(version - 1, per_step) == max(0, step - 1)


def test_run_config_speaks_the_same_words():
    alternating = RunConfig(update_rule="alternating")
    assert [alternating.phase_of(v) for v in range(3)] == [Phase.D, Phase.G, Phase.D]
    assert RunConfig(update_rule="simultaneous").phase_of(5) is Phase.BOTH
    assert alternating.steps_of(3) == version_to_step(3, 2) == 1
    assert PHASES == ("both", "D", "G")

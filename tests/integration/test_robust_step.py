"""The coordinator's step under a robust rule uses the run's own trim fraction and clip
factor. The rules themselves are checked by hand in tests/unit/test_aggregation.py; this
checks what reaches them. With the default settings, a parameter dropped or shifted on its
way to the rule changed nothing (mutation testing found both surviving), so the run here
sets values away from the defaults, and checks too that they give another step."""

import pytest
import torch
from safetensors.torch import load

from ganpool.aggregation.robust import aggregate
from ganpool.coordinator import Coordinator
from ganpool.serialization.tensors import pack
from ganpool.settings import RunConfig
from ganpool.training.state import TrainingState
from tests.helpers import FakeStudent, make_run

RESULTS = 5
# Away from the defaults (0.25 and 2.0): with 5 results, 0.45 trims two at each end where
# 0.25 trims one, and a cap of 1.2x the median norm clips harder than 2x.
SETTINGS = {"trim_fraction": 0.45, "clip_factor": 1.2}


def _stepped(cfg: RunConfig, mean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights after one step on `mean`, from the run's initial state."""
    state = TrainingState(cfg)
    state.apply(mean)
    return state.weights()


@pytest.mark.parametrize("rule", ["trimmed_mean", "clip"])
def test_the_step_combines_results_with_the_runs_own_rule_settings(embedded_db, rule):
    run = make_run(
        embedded_db,
        unit_size=10,
        results_per_step=RESULTS,
        aggregation=rule,
        norm_z_max=0.0,  # the large result is for the rule to handle, not screening
        **SETTINGS,
    )
    coordinator = Coordinator(embedded_db, run)
    students = []
    try:
        coordinator.start()
        students = [FakeStudent(embedded_db, run, f"s{i}") for i in range(RESULTS)]
        pairs = []
        for i, student in enumerate(students):
            unit = student.claim()
            fields = student.payload(unit)
            tensors = load(fields["payload"])
            if i == 0:  # one result far larger than the others: the rules must bound it
                tensors = {k: v * 50 if k.startswith("grad.") else v for k, v in tensors.items()}
                fields["payload"] = pack(tensors)
            assert student.submit(unit, **fields)["accepted"]
            pairs.append((tensors, float(len(unit["indices"]))))
        coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1

        cfg = run.config
        want = _stepped(cfg, aggregate(pairs, rule, cfg.trim_fraction, cfg.clip_factor))
        default = _stepped(cfg, aggregate(pairs, rule))
        assert any(not torch.allclose(want[k], default[k]) for k in want), (
            "the run's settings give the same step as the defaults: the test tells nothing"
        )
        got = coordinator.state.weights()
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    finally:
        for student in students:
            student.close()
        coordinator.close()

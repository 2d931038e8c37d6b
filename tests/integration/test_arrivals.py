"""Results are read as they land, between ticks, and summed weighted by samples, so that a
step only waits for its last result.

The step sums the results itself whenever the running sum does not hold exactly the results
it applies, so a running sum that silently stopped working still trains correctly, only
slower: the end-to-end tests cannot tell. Mutation testing found such bugs surviving (a
refused payload ending the reading, a result summed under the wrong id); this test looks at
the sum itself."""

import pytest
import torch
from safetensors.torch import load

from ganpool.coordinator import Coordinator
from ganpool.coordinator import round as round_module
from ganpool.errors import PayloadError
from ganpool.store import connect
from tests.helpers import FakeStudent, make_run


def _landed(dsn, run) -> dict[int, int]:
    """unit id -> result id, for every result submitted to the run."""
    with connect(dsn) as conn:
        rows = conn.execute("SELECT id, unit_id FROM results WHERE run_id = %s", (run.id,))
        return {r["unit_id"]: r["id"] for r in rows.fetchall()}


def test_results_are_summed_weighted_as_they_land_and_a_refused_one_is_passed_over(
    embedded_db, monkeypatch
):
    # 100 faces in units of 40: 40, 40 and 20 images.
    run = make_run(embedded_db, unit_size=40, results_per_step=3)
    reports = []
    coordinator = Coordinator(embedded_db, run, on_step=reports.append)
    coordinator.start()
    students = [FakeStudent(embedded_db, run, name) for name in ("bad", "b", "c")]
    try:
        units = [s.claim() for s in students]
        assert sorted(len(u["indices"]) for u in units) == [20, 40, 40]
        # The first to land is garbage: the reading must go on past it.
        assert students[0].submit(units[0], payload=b"not safetensors")["accepted"]
        sent = {}
        for student, unit in zip(students[1:], units[1:], strict=True):
            fields = student.payload(unit)
            assert student.submit(unit, **fields)["accepted"]
            sent[unit["unit_id"]] = (load(fields["payload"]), len(unit["indices"]))
            # Between ticks, as serve() does: each reading reads all that landed (the
            # second good one lands behind results already read).
            coordinator.collect()
            result_of = _landed(embedded_db, run)
            assert set(coordinator.round.arrivals.results) == set(result_of.values())

        arrivals = coordinator.round.arrivals
        assert isinstance(arrivals.results[result_of[units[0]["unit_id"]]], PayloadError)
        good = {result_of[u] for u in sent}
        assert arrivals.mean_of(good - {min(good)}) is None  # it holds both, not one
        mean = arrivals.mean_of(good)
        assert mean is not None, "the running sum does not hold the valid results"
        (x, nx), (y, ny) = sent.values()
        assert nx != ny  # 40 and 20: a plain mean is elsewhere
        assert set(mean) == set(x)
        for name, got in mean.items():
            want = (nx * x[name].double() + ny * y[name].double()) / (nx + ny)
            torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-9, msg=name)

        read = dict(arrivals.results)
        coordinator.collect()  # nothing new landed: nothing is read again
        assert all(arrivals.results[i] is known for i, known in read.items())
        assert arrivals.mean_of(good) is not None
        # The step takes that sum; it does not sum the results again.
        summed_again = []
        aggregate = round_module.aggregate
        monkeypatch.setattr(
            round_module, "aggregate", lambda *a: summed_again.append(a) or aggregate(*a)
        )
        coordinator.tick()
        assert coordinator.version == 1
        assert not summed_again, "the step summed its results again"
        assert students[0].rejections(), "the garbage payload was not refused"
        (report,) = reports  # what `ganpool train` prints for the step
        assert (report.version, report.units, report.images, report.rejected) == (1, 2, nx + ny, 1)
        assert report.epochs == pytest.approx((nx + ny) / 100)  # 60 of the 100 faces
        assert 0 < report.seconds < 60
    finally:
        for student in students:
            student.close()
        coordinator.close()

"""Screening under the default settings, and refusals that must not stall the run: a student
logged in over SCRAM sends results that the old checks let through or that stopped the
alternating rule for good. The coordinator is driven tick by tick, so each case is exact."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from ganpool.aggregation.robust import grad_norm, robust_z
from ganpool.coordinator import Coordinator
from ganpool.errors import ConfigError
from ganpool.serialization.tensors import pack
from ganpool.settings import load_run_config
from tests.helpers import make_run
from tests.security.classroom import Logins, Student

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def logins(embedded_db, embedded_server):
    made = Logins(embedded_db, embedded_server.port)
    yield made
    made.close()


def _step(coordinator: Coordinator) -> None:
    coordinator.collect()
    coordinator.tick()


def _honest_steps(coordinator: Coordinator, honest: Student, steps: int) -> None:
    """The honest student computes every unit of `steps` versions."""
    for _ in range(steps):
        v = coordinator.version
        while (unit := honest.claim()) is not None:
            assert honest.submit(unit)["accepted"]
        _step(coordinator)
        assert coordinator.version == v + 1


@contextmanager
def _cohort(dsn: str, logins: Logins, name: str) -> Iterator[tuple[Coordinator, Student, Student]]:
    """A run of units of 10, two results a step; an honest student has sent a cohort of 10
    results (five steps), and mallory, logged in over SCRAM, has joined."""
    run = make_run(dsn, name, unit_size=10, results_per_step=2)
    coordinator = Coordinator(dsn, run)
    honest = Student(dsn, run, "honest")
    mallory = Student(logins.add("mallory"), run, "mallory")
    try:
        coordinator.start()
        _honest_steps(coordinator, honest, 5)
        yield coordinator, honest, mallory
    finally:
        honest.close()
        mallory.close()
        coordinator.close()


def _applied(coordinator: Coordinator, student: Student) -> int:
    """How many of the student's results were applied."""
    return coordinator.store.conn.execute(
        "SELECT count(*) AS n FROM version_contributions WHERE worker_id = %s", (student.id,)
    ).fetchone()["n"]


def _scale(prefix: str, factor: float):
    return lambda t: {k: v * factor if k.startswith(prefix) else v for k, v in t.items()}


def test_every_g_result_refused_is_reissued_even_across_a_restart(embedded_db, logins):
    """Two students send one byte each for the only two G units of a version: both refused.
    The units go out again to another student, and a coordinator restarted in that state
    (what used to stall for good) recovers the same way."""
    run = make_run(
        embedded_db, "g-refused", unit_size=10, results_per_step=2, update_rule="alternating"
    )
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    honest = Student(embedded_db, run, "honest")
    bytes1 = Student(logins.add("byte1"), run, "byte1")
    bytes2 = Student(logins.add("byte2"), run, "byte2")
    try:
        _honest_steps(coordinator, honest, 1)  # D phase: version 1 is a G phase
        g1, g2 = bytes1.claim(), bytes2.claim()
        assert g1["phase"] == g2["phase"] == "G"
        bytes1.submit(g1, payload=b"x")
        bytes2.submit(g2, payload=b"x")
        _step(coordinator)
        assert coordinator.version == 1  # every result of the phase was refused
        coordinator.close()  # ... and the coordinator restarts right then

        coordinator = Coordinator(embedded_db, run)
        coordinator.start()
        coordinator.tick()  # the refused G units are reissued
        copies = [honest.claim(), honest.claim()]
        assert all(c is not None and c["phase"] == "G" for c in copies)
        for c in copies:
            assert honest.submit(c)["accepted"]
        _step(coordinator)
        assert coordinator.version == 2
        applied = coordinator.store.conn.execute(
            "SELECT u.backup_of, c.worker_id FROM version_contributions AS c "
            "JOIN work_units AS u ON u.id = c.unit_id WHERE c.run_id = %s AND c.version = 2",
            (run.id,),
        ).fetchall()
        assert sorted(a["backup_of"] for a in applied) == sorted([g1["unit_id"], g2["unit_id"]])
        assert {a["worker_id"] for a in applied} == {honest.id}
        _honest_steps(coordinator, honest, 2)  # and the alternation carries on
    finally:
        for s in (honest, bytes1, bytes2):
            s.close()
        coordinator.close()


def test_a_g_phase_refused_by_everyone_is_skipped_not_waited_for(embedded_db, logins):
    """When no student can compute a G unit (each refused, copies exhausted or unclaimable),
    the G step is skipped: the run carries on rather than wait for good."""
    run = make_run(
        embedded_db, "g-skip", unit_size=10, results_per_step=1, update_rule="alternating"
    )
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    honest = Student(embedded_db, run, "honest")
    try:
        _honest_steps(coordinator, honest, 1)
        weights = {k: v.clone() for k, v in coordinator.state.weights().items()}
        # The only student's G result is refused (NaN gradients): the unit's copies may not
        # go back to that student, and no one else is there to claim them.
        unit = honest.claim()
        honest.submit(unit, tamper=_scale("grad.", math.nan))
        _step(coordinator)
        assert coordinator.version == 1
        for _ in range(12):
            coordinator.store.conn.execute(  # copies left unclaimed past the patience
                "UPDATE work_units SET created_at = now() - interval '1 hour' "
                "WHERE run_id = %s AND state = 'pending'",
                (run.id,),
            )
            coordinator.tick()
            if coordinator.version == 2:
                break
            assert honest.claim() is None
        assert coordinator.version == 2, "the G phase waited for good"
        for k, v in coordinator.state.weights().items():  # G was not stepped
            assert torch.equal(v, weights[k]), k
        _honest_steps(coordinator, honest, 2)
    finally:
        honest.close()
        coordinator.close()


@pytest.mark.parametrize("as_they_land", [True, False], ids=["as-they-land", "at-the-step"])
def test_batchnorm_statistics_no_batch_could_produce_are_refused(embedded_db, logins, as_they_land):
    """Judged the same whether a payload was read as it landed or only by the step (which
    then needs the version's statistics itself)."""
    run = make_run(embedded_db, "bn", unit_size=10, results_per_step=4)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    honest = Student(embedded_db, run, "honest")
    m1 = Student(logins.add("negvar"), run, "negvar")
    m2 = Student(logins.add("halfvar"), run, "halfvar")
    m3 = Student(logins.add("halfvarg"), run, "halfvarg")
    try:
        u, a, b, c = honest.claim(), m1.claim(), m2.claim(), m3.claim()
        assert honest.submit(u)["accepted"]

        def negative(t):
            return {k: -torch.ones_like(v) if "running_var" in k else v for k, v in t.items()}

        m1.submit(a, tamper=negative)  # running_var = -1: the old checks let it through
        m2.submit(b, tamper=_scale("buf.D", 0.5))  # positive, but below what any batch gives
        m3.submit(c, tamper=_scale("buf.G", 0.5))  # the same for G's statistics
        if as_they_land:
            coordinator.collect()
        coordinator.tick()
        assert coordinator.version == 1
        assert "variance <= 0" in m1.rejections()[-1]
        assert "cannot come from any batch" in m2.rejections()[-1]
        assert "statistic G." in m3.rejections()[-1]
        assert "cannot come from any batch" in m3.rejections()[-1]
        applied = coordinator.store.conn.execute(
            "SELECT worker_id FROM version_contributions WHERE run_id = %s", (run.id,)
        ).fetchall()
        assert [r["worker_id"] for r in applied] == [honest.id]
        g = coordinator.state.g.eval()
        with torch.no_grad():
            assert torch.isfinite(g(torch.randn(8, run.config.nz))).all()
    finally:
        for s in (honest, m1, m2, m3):
            s.close()
        coordinator.close()


def test_cohort_checks_are_per_network_and_cover_batchnorm(embedded_db, logins):
    """Each network's gradient norm, and each BatchNorm statistic, is judged on its own
    against the recent results of its phase: a variance 20x the cohort's is positive, and a
    batch could in principle produce it, but it is refused."""
    with _cohort(embedded_db, logins, "cohort") as (coordinator, honest, mallory):
        for tamper, reason in (
            (_scale("grad.D", 1e4), "D's gradient norm"),
            (_scale("grad.G", 1e4), "G's gradient norm"),
            (_scale("buf.G", 20.0), "BatchNorm statistic G."),
        ):
            v = coordinator.version
            mine, theirs = mallory.claim(), honest.claim()
            assert honest.submit(theirs)["accepted"]
            mallory.submit(mine, tamper=tamper)
            _step(coordinator)
            assert coordinator.version == v + 1
            assert reason in mallory.rejections()[-1], mallory.rejections()
        assert _applied(coordinator, mallory) == 0


def test_batchnorm_statistics_are_judged_by_their_own_limit(embedded_db, logins):
    """BatchNorm statistics vary less between batches than gradient norms do: they are
    judged against a limit of 6, not the run's `norm_z_max` (12 by default). D's statistics
    3x an honest result's (robust z about 8.5) are refused."""
    with _cohort(embedded_db, logins, "limits") as (coordinator, honest, mallory):
        assert coordinator.cfg.norm_z_max == 12
        mine, theirs = mallory.claim(), honest.claim()
        assert honest.submit(theirs)["accepted"]
        mallory.submit(mine, tamper=_scale("buf.D", 3.0))
        _step(coordinator)
        assert coordinator.version == 6
        reasons = mallory.rejections()
        assert len(reasons) == 1 and "BatchNorm statistic D." in reasons[0], reasons
        assert "limit 6)" in reasons[0], reasons


def test_gradient_norms_are_judged_by_norm_z_max_not_the_batchnorm_limit(embedded_db, logins):
    """A gradient norm is judged against the run's `norm_z_max` (12), not the BatchNorm
    statistics' limit of 6: early in a run D's norms drift, and a D gradient at robust z
    about 9 is applied."""
    with _cohort(embedded_db, logins, "norm-limit") as (coordinator, honest, mallory):
        assert coordinator.cfg.norm_z_max == 12
        history = coordinator.screening.history[("both", "norm.D")]
        logs = [math.log(x) for x in history]
        median = statistics.median(logs)
        scale = 1 / robust_z(median + 1, logs, min_scale=0.25)  # the z of one log unit
        target = math.exp(median + 9 * scale)
        sent = []

        def to_target(tensors):
            factor = target / grad_norm(
                {k: t for k, t in tensors.items() if k.startswith("grad.D.")}
            )
            sent.append(factor)
            return _scale("grad.D.", factor)(tensors)

        mine, theirs = mallory.claim(), honest.claim()
        assert honest.submit(theirs)["accepted"]
        assert mallory.submit(mine, tamper=to_target)["accepted"]
        _step(coordinator)
        assert coordinator.version == 6
        assert mallory.rejections() == []
        # The z it was judged at: the history holds every norm the step judged.
        reference = [math.log(x) for x in history]
        z = robust_z(math.log(target), reference, min_scale=0.25)
        assert 6 < z < 12, (z, sent)
        assert _applied(coordinator, mallory) == 1


def test_g_phase_units_are_spot_checked(embedded_db):
    run = make_run(
        embedded_db,
        "g-spot",
        unit_size=10,
        results_per_step=2,
        update_rule="alternating",
        spot_check_rate=1.0,
    )
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    a, b = Student(embedded_db, run, "a"), Student(embedded_db, run, "b")
    try:
        for _ in range(2):  # a D phase, then a G phase
            v = coordinator.version
            for s in (a, b, a, b):
                unit = s.claim()
                if unit is not None:
                    assert s.submit(unit)["accepted"]
            for s in (a, b):
                while (unit := s.claim()) is not None:
                    assert s.submit(unit)["accepted"]
            _step(coordinator)
            assert coordinator.version == v + 1
        checks = coordinator.store.conn.execute(
            "SELECT u.phase, s.agreed FROM spot_checks AS s JOIN work_units AS u "
            "ON u.id = s.unit_id WHERE s.run_id = %s",
            (run.id,),
        ).fetchall()
        assert sorted(c["phase"] for c in checks) == ["D", "D", "G", "G"]
        assert all(c["agreed"] for c in checks)
    finally:
        a.close()
        b.close()
        coordinator.close()


def test_a_twin_whose_original_was_refused_is_retired_and_the_next_pair_still_compared(
    embedded_db,
):
    """Every unit has a twin. The first original is refused (NaN) while its twin is valid: the
    twin has nothing to check, so it is retired unapplied, and the second pair, whose twin
    comes after it in the step, is still compared; no twin is ever applied."""
    run = make_run(embedded_db, "lone-twin", unit_size=10, results_per_step=2, spot_check_rate=1.0)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    a, b = Student(embedded_db, run, "a"), Student(embedded_db, run, "b")
    try:
        first, second, second_twin, first_twin = a.claim(), b.claim(), a.claim(), b.claim()
        # the twins' noise seeds are their originals' (the claim does not say whose twin)
        assert first["noise_seed"] == first_twin["noise_seed"] != second["noise_seed"]
        assert second["noise_seed"] == second_twin["noise_seed"]
        a.submit(first, tamper=_scale("grad.", math.nan))  # refused when screened
        for s, unit in ((b, first_twin), (b, second), (a, second_twin)):
            assert s.submit(unit)["accepted"]
        _step(coordinator)
        assert coordinator.version == 1
        conn = coordinator.store.conn
        rows = conn.execute(
            "SELECT unit_id, status, EXISTS (SELECT FROM result_payloads AS p "
            "WHERE p.result_id = r.id) AS kept FROM results AS r"
        ).fetchall()
        assert {r["unit_id"]: r["status"] for r in rows} == {
            first["unit_id"]: "rejected",
            first_twin["unit_id"]: "verified",
            second["unit_id"]: "applied",
            second_twin["unit_id"]: "verified",
        }
        # a twin's payload is dropped once it is done with
        assert [r["unit_id"] for r in rows if r["kept"]] == [second["unit_id"]]
        checks = conn.execute("SELECT unit_id, twin_id, agreed FROM spot_checks").fetchall()
        assert checks == [
            {"unit_id": second["unit_id"], "twin_id": second_twin["unit_id"], "agreed": True}
        ]
        applied = conn.execute("SELECT unit_id FROM version_contributions").fetchall()
        assert applied == [{"unit_id": second["unit_id"]}]
    finally:
        a.close()
        b.close()
        coordinator.close()


def _one_hot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients of a single 1 (exact arithmetic: twins sending it have cosine 1.0 and
    norms that differ by 0.0)."""
    out = {k: torch.zeros_like(v) if k.startswith("grad.") else v for k, v in tensors.items()}
    first = min(k for k in out if k.startswith("grad."))
    out[first].view(-1)[0] = 1.0
    return out


def test_twins_agree_at_exactly_the_thresholds(embedded_db):
    """The thresholds are inclusive: a cosine of at least `spot_check_cosine` and norms that
    differ by at most `spot_check_rel_norm` agree. At the strictest settings (1 and 0), twins
    that agree exactly still do."""
    run = make_run(
        embedded_db,
        "exact-twins",
        unit_size=10,
        results_per_step=2,
        spot_check_rate=1.0,
        spot_check_cosine=1.0,
        spot_check_rel_norm=0.0,
    )
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    a, b = Student(embedded_db, run, "a"), Student(embedded_db, run, "b")
    try:
        units = [(a, a.claim()), (b, b.claim()), (a, a.claim()), (b, b.claim())]
        for s, unit in units:
            assert s.submit(unit, tamper=_one_hot)["accepted"]
        _step(coordinator)
        assert coordinator.version == 1
        conn = coordinator.store.conn
        checks = conn.execute("SELECT cosine, rel_norm, agreed FROM spot_checks").fetchall()
        assert checks == [{"cosine": 1.0, "rel_norm": 0.0, "agreed": True}] * 2
        assert a.rejections() == [] and b.rejections() == []
        applied = conn.execute("SELECT count(*) AS n FROM version_contributions").fetchone()
        assert applied["n"] == 2
        # agreeing never costs trust (it starts at 1, the most there is)
        trust = conn.execute("SELECT trust FROM workers ORDER BY id").fetchall()
        assert trust == [{"trust": 1.0}] * 2
    finally:
        a.close()
        b.close()
        coordinator.close()


@pytest.mark.parametrize("rule", ["trimmed_mean", "median", "clip"])
def test_robust_rules_are_refused_below_three_results(rule):
    with pytest.raises(ConfigError, match="reduce to the mean"):
        load_run_config(overrides={"aggregation": rule, "results_per_step": 2})
    assert load_run_config(overrides={"aggregation": rule, "results_per_step": 3})


@pytest.mark.parametrize("rule", ["simultaneous", "alternating"])
def test_each_results_norms_are_recorded_with_it(embedded_db, rule):
    """What screening measured stays with the result for an instructor to read: each
    network's gradient norm (none for a network its phase did not compute: under the
    alternating rule, G's in the D phase and D's in the G phase), and the whole result's,
    the two combined."""
    run = make_run(embedded_db, "norms", unit_size=10, results_per_step=2, update_rule=rule)
    coordinator = Coordinator(embedded_db, run)
    coordinator.start()
    students = [Student(embedded_db, run, name) for name in ("a", "b")]
    try:
        sent = {}
        for _ in range(2):  # the alternating rule: a D phase, then a G phase
            for student in students:
                unit = student.claim()
                tensors = student.tensors(unit)
                assert student.submit(unit, payload=pack(tensors))["accepted"]
                sent[unit["unit_id"]] = {
                    net: math.sqrt(sum(float(v.double().pow(2).sum())
                                       for k, v in tensors.items()
                                       if k.startswith(f"grad.{net}."))) or None
                    for net in ("G", "D")
                }  # fmt: skip
            _step(coordinator)
        rows = coordinator.store.conn.execute(
            "SELECT unit_id, grad_norm, norm_g, norm_d FROM results WHERE run_id = %s", (run.id,)
        ).fetchall()
        assert {r["unit_id"] for r in rows} == set(sent)
        computed = sorted((v["G"] is not None, v["D"] is not None) for v in sent.values())
        if rule == "alternating":
            assert computed == [(False, True)] * 2 + [(True, False)] * 2
        else:
            assert computed == [(True, True)] * 4
        for r in rows:
            g, d = sent[r["unit_id"]]["G"], sent[r["unit_id"]]["D"]
            if g is not None and d is not None:
                assert g != pytest.approx(d, rel=0.01)  # which is which shows
            for stored, norm in ((r["norm_g"], g), (r["norm_d"], d)):
                assert stored == (None if norm is None else pytest.approx(norm, rel=1e-5))
            assert r["grad_norm"] == pytest.approx(math.hypot(g or 0.0, d or 0.0), rel=1e-5)
    finally:
        for student in students:
            student.close()
        coordinator.close()

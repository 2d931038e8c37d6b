"""Curated mutants of the rules that live in PostgreSQL: the worker's functions, the queue's
queries and the exactly-once constraints.

mutmut mutates Python only, and most SQL mutations a generic tool could make (any `=` to
`<>`) break a migration outright. So each mutant here is one plausible bug, written down with
what it would let happen. The runner plants one at a time in a scratch copy of src/ (the
repository is never touched), runs the tests that should notice it first, then the rest of
the fast database tests, stopping at the first failure, and reports killed or survived.

    python tools/sql_mutants.py                 # every mutant
    python tools/sql_mutants.py --only claim    # the mutants whose id contains "claim"
    python tools/sql_mutants.py --list          # what would run
    python tools/sql_mutants.py --again         # retry mutants that have a verdict

A mutant whose text is no longer found exactly once is reported "stale": the SQL changed
(a new migration that replaces a function, say) and the list needs updating.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL = Path("ganpool/store/sql")

# The fast tests that talk to the database, run after each mutant's own (no subprocesses).
BROAD = (
    "tests/integration/test_weighting.py",
    "tests/integration/test_leases.py",
    "tests/integration/test_store.py",
    "tests/integration/test_protocol.py",
    "tests/security/test_roles.py",
    "tests/security/test_payloads.py",
    "tests/security/test_attacks.py",
)
PROTOCOL = "tests/integration/test_protocol.py"
WEIGHTING = "tests/integration/test_weighting.py"
ROLES = "tests/security/test_roles.py"
LEASES = "tests/integration/test_leases.py"


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # under src/ganpool/store/sql/
    find: str
    replace: str
    bug: str  # what the mutant would let happen
    tests: tuple[str, ...] = ()  # expected to notice it: run first


M1, M5 = "migrations/0001_initial.sql", "migrations/0005_performance.sql"
M2, Q = "migrations/0002_worker_api.sql", "queries.sql"

MUTANTS = [
    # -- exactly once: the constraints -------------------------------------------------------
    Mutant(
        "unique-contribution-unit",
        M1,
        "unit_id    bigint NOT NULL UNIQUE REFERENCES work_units (id)",
        "unit_id    bigint NOT NULL REFERENCES work_units (id)",
        "a unit's work can be counted in two versions",
        (f"{WEIGHTING}::test_an_applied_unit_refuses_a_different_second_result",),
    ),
    Mutant(
        "unique-contribution-result",
        M1,
        "result_id  bigint NOT NULL UNIQUE REFERENCES results (id)",
        "result_id  bigint NOT NULL REFERENCES results (id)",
        "one result can be counted for two units",
        (f"{WEIGHTING}::test_an_applied_result_cannot_be_counted_for_another_unit",),
    ),
    Mutant(
        "unique-result-unit",
        M1,
        "unit_id          bigint NOT NULL UNIQUE REFERENCES work_units (id)",
        "unit_id          bigint NOT NULL REFERENCES work_units (id)",
        "two accepted submissions for one unit",
        (f"{WEIGHTING}::test_an_applied_unit_refuses_a_second_submission_row",),
    ),
    Mutant(
        "apply-any-status",
        Q,
        "WHERE id = %(result_id)s AND status = 'submitted'\n    RETURNING id, unit_id, worker_id",
        "WHERE id = %(result_id)s\n    RETURNING id, unit_id, worker_id",
        "a rejected (or already applied) result can be applied",
        ("tests/integration/test_store.py", WEIGHTING),
    ),
    # -- leases ------------------------------------------------------------------------------
    Mutant(
        "expire-never",
        Q,
        "AND state = 'claimed' AND lease_expires_at < now()",
        "AND state = 'claimed' AND lease_expires_at < now() - interval '1 hour'",
        "a silent worker keeps its unit for an hour past its lease",
        (f"{PROTOCOL}::test_a_silent_worker_loses_its_unit_which_is_reissued_and_applied_once",),
    ),
    Mutant(
        "lease-fixed",
        M2,
        "SELECT make_interval(secs => (config ->> 'lease_s')::double precision)",
        "SELECT make_interval(secs => 60)",
        "the run's lease_s is ignored",
        (f"{PROTOCOL}::test_a_silent_worker_loses_its_unit_which_is_reissued_and_applied_once",),
    ),
    Mutant(
        "claim-lease-long",
        M5,
        "claimed_at = now(), lease_expires_at = now() + ganpool_lease_interval(v_run)",
        "claimed_at = now(), lease_expires_at = now() + interval '1 hour'",
        "a claim takes an hour's lease whatever the run says",
        (f"{PROTOCOL}::test_claims_are_exclusive_and_leases_use_the_servers_clock",),
    ),
    Mutant(
        "heartbeat-no-extension",
        M2,
        "    SET lease_expires_at = now() + ganpool_lease_interval(v_run)\n",
        "    SET lease_expires_at = lease_expires_at\n",
        "heartbeats do not keep a lease: a slow, live worker loses its unit",
        (f"{PROTOCOL}::test_heartbeats_keep_the_lease",),
    ),
    Mutant(
        "heartbeat-any-attempt",
        M2,
        "ganpool_lease_interval(v_run)\n    WHERE id = p_unit_id AND worker_id = p_worker_id "
        "AND attempt = p_attempt",
        "ganpool_lease_interval(v_run)\n    WHERE id = p_unit_id AND worker_id = p_worker_id",
        "a heartbeat for an expired attempt extends the lease of a later one",
        (LEASES,),
    ),
    # -- claiming ----------------------------------------------------------------------------
    Mutant(
        "claim-cancelled-too",
        M5,
        "WHERE c.run_id = v_run AND c.state = 'pending' AND r.status = 'running'",
        "WHERE c.run_id = v_run AND c.state IN ('pending', 'cancelled') AND r.status = 'running'",
        "cancelled (stale) units are handed out again",
        (PROTOCOL,),
    ),
    Mutant(
        "claim-any-run-status",
        M5,
        "WHERE c.run_id = v_run AND c.state = 'pending' AND r.status = 'running'",
        "WHERE c.run_id = v_run AND c.state = 'pending'",
        "units of a paused or finished run are still handed out",
        (LEASES,),
    ),
    Mutant(
        "claim-newest-first",
        M5,
        "        ORDER BY c.seq\n        LIMIT 1",
        "        ORDER BY c.seq DESC\n        LIMIT 1",
        "reissued images wait behind fresh ones",
        (f"{PROTOCOL}::test_a_late_result_is_rejected_with_its_reason_and_its_images_go_back",),
    ),
    Mutant(
        "claim-own-twin",
        M5,
        "          AND NOT EXISTS (SELECT 1 FROM work_units AS o\n"
        "                          WHERE o.id = c.twin_of AND ganpool_worked_on(o, p_worker_id))\n",
        "",
        "a worker may be handed the spot-check twin of its own unit",
        ("tests/security/test_attacks.py",),
    ),
    Mutant(
        "claim-wait-not-skip",
        M5,
        "FOR UPDATE OF c SKIP LOCKED",
        "FOR UPDATE OF c",
        "concurrent claims queue on one row (and may come back empty) instead of skipping it",
        (PROTOCOL,),
    ),
    # -- submitting --------------------------------------------------------------------------
    Mutant(
        "submit-stale-accepted",
        M5,
        "    ELSIF u.state = 'cancelled' THEN",
        "    ELSIF false THEN",
        "a result for a cancelled unit is recorded",
        (f"{PROTOCOL}::test_a_late_result_is_rejected_with_its_reason_and_its_images_go_back",),
    ),
    Mutant(
        "submit-any-attempt",
        M5,
        "ELSIF u.worker_id IS DISTINCT FROM p_worker_id OR u.attempt <> p_attempt THEN",
        "ELSIF u.worker_id IS DISTINCT FROM p_worker_id THEN",
        "a worker whose lease expired submits over its own new claim",
        (PROTOCOL,),
    ),
    Mutant(
        "submit-any-holder",
        M5,
        "ELSIF u.worker_id IS DISTINCT FROM p_worker_id OR u.attempt <> p_attempt THEN",
        "ELSIF u.attempt <> p_attempt THEN",
        "a worker submits for a unit another worker holds",
        (f"{ROLES}::test_a_student_cannot_submit_for_a_unit_someone_else_holds", PROTOCOL),
    ),
    Mutant(
        "submit-any-state",
        M5,
        "    ELSIF u.state <> 'claimed' THEN",
        "    ELSIF false THEN",
        "a submission for a pending or rejected unit gets past the state check",
        (LEASES,),
    ),
    Mutant(
        "submit-any-run-status",
        M5,
        "    ELSIF v_status NOT IN ('running', 'paused') THEN",
        "    ELSIF false THEN",
        "results are recorded after the run has finished or stopped",
        (LEASES,),
    ),
    Mutant(
        "submit-samples-one",
        M5,
        "VALUES (u.run_id, u.id, p_worker_id, u.version, cardinality(u.indices), p_g_loss,",
        "VALUES (u.run_id, u.id, p_worker_id, u.version, 1, p_g_loss,",
        "every result weighs the same, whatever its unit's size",
        (WEIGHTING,),
    ),
    Mutant(
        "submit-retry-any-attempt",
        M5,
        "    ELSIF u.state IN ('submitted', 'applied') AND u.worker_id = p_worker_id\n"
        "          AND u.attempt = p_attempt THEN",
        "    ELSIF u.state IN ('submitted', 'applied') AND u.worker_id = p_worker_id THEN",
        "an old attempt's late result is told 'already recorded' instead of 'lease lost'",
        (LEASES,),
    ),
    # -- who may call ------------------------------------------------------------------------
    Mutant(
        "caller-not-owner",
        M5,
        "    IF w.role_name <> session_user AND NOT ganpool_is_instructor() THEN",
        "    IF false THEN",
        "a student acts for another student's worker",
        (f"{ROLES}::test_a_student_cannot_act_for_another_students_worker",),
    ),
    Mutant(
        "caller-disabled",
        M5,
        "    IF w.disabled AND NOT p_leaving THEN",
        "    IF false THEN",
        "a worker disabled for failed spot checks keeps working",
        ("tests/security/test_attacks.py",),
    ),
    Mutant(
        "payload-not-waiting",
        M5,
        "    IF r.id IS NULL OR r.status <> 'submitted' THEN",
        "    IF r.id IS NULL THEN",
        "a payload is written for a result already decided",
        (f"{ROLES}::test_a_payload_by_copy_goes_only_to_the_students_own_waiting_result",),
    ),
    Mutant(
        "payload-any-owner",
        M5,
        "    PERFORM ganpool_caller_worker(r.worker_id);  -- the caller's own result",
        "    -- (owner check removed)",
        "a student writes the payload of another student's result",
        (f"{ROLES}::test_a_payload_by_copy_goes_only_to_the_students_own_waiting_result",),
    ),
    Mutant(
        "release-any-worker",
        M2,
        "SET state = 'pending', worker_id = NULL, lease_expires_at = NULL\n"
        "    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt",
        "SET state = 'pending', worker_id = NULL, lease_expires_at = NULL\n"
        "    WHERE id = p_unit_id AND attempt = p_attempt",
        "a worker releases a unit another worker holds",
        (LEASES,),
    ),
    # -- the step's queries ------------------------------------------------------------------
    Mutant(
        "cancel-stale-late",
        Q,
        "WHERE run_id = %(run_id)s AND version < %(version)s AND state IN ('pending', 'claimed')",
        "WHERE run_id = %(run_id)s AND version < %(version)s - 1 "
        "AND state IN ('pending', 'claimed')",
        "units of the previous version stay live after a step",
        (f"{PROTOCOL}::test_a_late_result_is_rejected_with_its_reason_and_its_images_go_back",),
    ),
    Mutant(
        "give-back-lost",
        Q,
        "UPDATE epochs SET returned = returned || %(indices)s::integer[]",
        "UPDATE epochs SET returned = returned",
        "a rejected result's images never come back to the epoch",
        (PROTOCOL,),
    ),
]


def plant(mutant: Mutant, src: Path) -> str | None:
    """Apply the mutant to the scratch copy; None when done, else why it cannot be."""
    path = src / SQL / mutant.file
    text = path.read_text()
    found = text.count(mutant.find)
    if found != 1:
        return f"stale: its text is found {found} times in {mutant.file}"
    path.write_text(text.replace(mutant.find, mutant.replace))
    return None


def pytest(tests: list[str], src: Path, timeout: float) -> tuple[str, str]:
    """(status, the line that tells why) of one pytest run on the mutated copy."""
    env = os.environ | {"PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Ctrl-C, so pytest's fixtures stop the PostgreSQL server they started.
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return "timeout", f"no verdict within {timeout:.0f}s"
    lines = [line for line in stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    status = {0: "survived", 1: "killed"}.get(proc.returncode, f"error ({proc.returncode})")
    return status, (failed or lines or ["(no output)"])[-1 if not failed else 0]


def run_one(mutant: Mutant, timeout: float) -> tuple[str, float, str]:
    """(status, seconds, why). The mutant's own tests run first, on their own: a kill is
    then quick; only a mutant they miss goes on to the other fast database tests."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sql-mutant-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
        problem = plant(mutant, src)
        if problem:
            return "stale", 0.0, problem
        status, why = "survived", ""
        for tests in (list(mutant.tests), [t for t in BROAD if t not in mutant.tests]):
            if tests and status == "survived":
                status, why = pytest(tests, src, timeout)
        return status, time.monotonic() - t0, why


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="ids containing this")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--again", action="store_true", help="retry mutants with a verdict")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(o in m.id for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.id:28} {m.file:34} {m.bug}")
        return 0
    # Verdicts are kept (mutants/sql-mutants.json), so an interrupted run resumes.
    saved = ROOT / "mutants" / "sql-mutants.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    verdicts = json.loads(saved.read_text()) if saved.exists() else {}
    for m in chosen:
        if m.id in verdicts and not args.again:
            continue
        status, seconds, why = run_one(m, args.timeout)
        print(f"{status:10} {seconds:6.1f}s  {m.id}: {why}", flush=True)
        verdicts[m.id] = {"status": status, "seconds": round(seconds), "why": why}
        saved.write_text(json.dumps(verdicts, indent=1))
    return report(verdicts)


def report(verdicts: dict) -> int:
    rows = [(m, verdicts[m.id]) for m in MUTANTS if m.id in verdicts]
    killed = sum(v["status"] in ("killed", "timeout") for _, v in rows)
    tried = sum(v["status"] in ("killed", "timeout", "survived") for _, v in rows)
    summary = (
        f"sql: {killed} of {tried} mutants killed; {len(MUTANTS) - len(rows)} not run, "
        f"{len(rows) - tried} stale or errored"
    )
    lines = [f"# {summary}", "", "| mutant | file | bug | status | s | why |", "|---" * 6 + "|"]
    for m, v in rows:
        cells = (m.id, m.file, m.bug, v["status"], str(v["seconds"]), v["why"].replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    out = ROOT / "mutants" / "sql-mutants.md"
    out.write_text("\n".join(lines) + "\n")
    print(summary)
    print(f"report: {out}")
    return 0 if killed == tried else 1


if __name__ == "__main__":
    sys.exit(main())

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
    python tools/sql_mutants.py --check         # only check that each mutant is live

Each mutant must sit in live SQL, or it survives for no fault of the tests. Before running
anything the runner refuses a mutant whose text is not found exactly once ("stale"), one in
a function that a later migration defines again or drops ("dead": migrations are append-only,
so a replaced function's old body never runs again), and one in a named query that no code
runs. tests/unit/test_sql_mutants.py checks the same, so a migration that replaces a function
fails `make test` until its mutants follow it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    "tests/integration/test_families.py",
    "tests/integration/test_leases.py",
    "tests/integration/test_store.py",
    "tests/integration/test_protocol.py",
    "tests/security/test_roles.py",
    "tests/security/test_payloads.py",
    "tests/security/test_attacks.py",
    "tests/security/test_student_stalls.py",
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
    # Why it is expected to survive, if it is (docs/testing.md, the triage): an equivalent
    # mutant or a property no test can show. A survivor without one fails the run.
    triaged: str = ""


M1, M2 = "migrations/0001_initial.sql", "migrations/0002_worker_api.sql"
M6, M8 = "migrations/0006_class_schema.sql", "migrations/0008_backup_units.sql"
M9 = "migrations/0009_one_caller_check_and_names.sql"
M11 = "migrations/0011_the_end_of_a_run_is_not_stale.sql"
Q = "queries.sql"
ONE = "tests/security/test_one_student.py"
STALLS = "tests/security/test_student_stalls.py"
SWEEPER = "tests/security/test_sweeper.py"
PAYLOADS = "tests/security/test_payloads.py"
DEFAULTS = "tests/security/test_screening_defaults.py"
POISON = "tests/integration/test_poison_units.py"
FAMILY = "tests/integration/test_families.py"
ATTACKS = "tests/security/test_attacks.py"

# The heartbeat's lease: the run's lease from now, bounded by the worker's hold limit.
HEARTBEAT_SET = (
    "    SET lease_expires_at = least(now() + ganpool_lease_interval(w.run_id),\n"
    + " " * 33
    + "claimed_at + ganpool_hold_limit(p_worker_id, w.run_id))\n"
)

# Each mutant sits in the LIVE text: the last migration that defines its function, a named
# query the code runs. `check` refuses any other (a function a later migration replaces).
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
        "unique-contribution-family",
        M8,
        "CREATE UNIQUE INDEX version_contributions_family ON",
        "CREATE INDEX version_contributions_family ON",
        "a unit and its backup copy are both applied: one unit's images count twice",
        (f"{WEIGHTING}::test_an_applied_family_refuses_a_copy_s_result",),
    ),
    Mutant(
        "apply-any-status",
        Q,
        "WHERE id = %(result_id)s AND status = 'submitted'\n    RETURNING id, unit_id, worker_id",
        "WHERE id = %(result_id)s\n    RETURNING id, unit_id, worker_id",
        "a rejected (or already applied) result can be applied",
        (f"{WEIGHTING}::test_only_a_waiting_result_can_be_applied",),
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
        M9,
        "claimed_at = now(), lease_expires_at = now() + ganpool_lease_interval(w.run_id)",
        "claimed_at = now(), lease_expires_at = now() + interval '1 hour'",
        "a claim takes an hour's lease whatever the run says",
        (f"{PROTOCOL}::test_claims_are_exclusive_and_leases_use_the_servers_clock",),
    ),
    Mutant(
        "heartbeat-no-extension",
        M9,
        HEARTBEAT_SET,
        "    SET lease_expires_at = lease_expires_at\n",
        "heartbeats do not keep a lease: a slow, live worker loses its unit",
        (f"{PROTOCOL}::test_heartbeats_keep_the_lease",),
    ),
    Mutant(
        "heartbeat-no-hold-limit",
        M9,
        HEARTBEAT_SET,
        "    SET lease_expires_at = now() + ganpool_lease_interval(w.run_id)\n",
        "heartbeats keep a claimed, never computed unit for ever",
        (f"{ONE}::test_a_student_holds_at_most_the_cap_and_cannot_stretch_a_lease",),
    ),
    Mutant(
        "heartbeat-any-attempt",
        M9,
        "    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt\n"
        "      AND state = 'claimed' AND lease_expires_at > now();",
        "    WHERE id = p_unit_id AND worker_id = p_worker_id\n"
        "      AND state = 'claimed' AND lease_expires_at > now();",
        "a heartbeat for an expired attempt extends the lease of a later one",
        (f"{LEASES}::test_an_expired_attempt_can_neither_heartbeat_nor_submit_over_the_next_one",),
    ),
    Mutant(
        "heartbeat-revives-expired",
        M9,
        "      AND state = 'claimed' AND lease_expires_at > now();",
        "      AND state = 'claimed';",
        "a heartbeat after the lease ran out (before the coordinator noticed) revives it",
        (LEASES,),
    ),
    # -- claiming ----------------------------------------------------------------------------
    Mutant(
        "claim-cancelled-too",
        M9,
        "WHERE c.run_id = w.run_id AND c.state = 'pending' AND r.status = 'running'",
        "WHERE c.run_id = w.run_id AND c.state IN ('pending', 'cancelled') "
        "AND r.status = 'running'",
        "cancelled (stale) units are handed out again",
        (PROTOCOL,),
    ),
    Mutant(
        "claim-any-run-status",
        M9,
        "WHERE c.run_id = w.run_id AND c.state = 'pending' AND r.status = 'running'",
        "WHERE c.run_id = w.run_id AND c.state = 'pending'",
        "units of a paused or finished run are still handed out",
        (f"{LEASES}::test_a_paused_run_hands_out_nothing_and_a_stopped_run_takes_no_result",),
    ),
    Mutant(
        "claim-newest-first",
        M9,
        "        ORDER BY c.seq  -- the pending index's order",
        "        ORDER BY c.seq DESC  -- the pending index's order",
        "reissued images wait behind fresh ones",
        (f"{PROTOCOL}::test_a_late_result_is_rejected_with_its_reason_and_its_images_go_back",),
    ),
    Mutant(
        "claim-touched-ignored",
        M9,
        "          AND NOT ganpool_touched(c, v_key)\n",
        "",
        "a student may be handed a copy, or the spot-check twin, of a unit they worked on",
        (f"{LEASES}::test_a_worker_is_never_handed_the_spot_check_twin_of_its_own_unit",),
    ),
    Mutant(
        "touched-no-twin",
        M8,
        "            UNION ALL\n"
        "            SELECT m.id, m.worker_id FROM work_units AS m WHERE m.id = c.twin_of\n",
        "",
        "a worker may be handed the spot-check twin of its own unit",
        (f"{LEASES}::test_a_worker_is_never_handed_the_spot_check_twin_of_its_own_unit",),
    ),
    Mutant(
        "touched-no-failures",
        M8,
        "    ) OR EXISTS (SELECT 1 FROM unit_failures AS f\n"
        "                 WHERE f.family_id = v_family AND f.who = p_key);",
        "    );",
        "a unit a student reported they cannot compute is handed back to that student",
        (FAMILY, POISON),
    ),
    Mutant(
        "worker-key-per-worker",
        M8,
        "THEN 'login:' || w.role_name",
        "THEN 'worker:' || w.id",
        "a student's second worker counts as another student (twins, copies, the unit cap)",
        (f"{ONE}::test_spot_check_twins_go_to_different_students",),
    ),
    Mutant(
        "claim-cap-plus-one",
        M9,
        "              AND o.role_name = w.role_name) >= v_cap THEN",
        "              AND o.role_name = w.role_name) > v_cap THEN",
        "a student holds one unit more than max_units_per_student",
        (f"{ONE}::test_a_student_holds_at_most_the_cap_and_cannot_stretch_a_lease",),
    ),
    Mutant(
        "claim-backup-same-step",
        M9,
        "AND (c.backup_of IS NULL OR r.config ->> 'aggregation' = 'mean'",
        "AND (true",
        "under a robust rule, a backup copy gives one student two results of one step",
        (FAMILY,),
    ),
    Mutant(
        "claim-wait-not-skip",
        M9,
        "FOR UPDATE OF c SKIP LOCKED",
        "FOR UPDATE OF c",
        "concurrent claims queue on one row (and may come back empty) instead of skipping it",
        (PROTOCOL,),
        triaged="a throughput property: the tests claim one at a time, make bench shows it",
    ),
    # -- submitting --------------------------------------------------------------------------
    Mutant(
        "submit-stale-accepted",
        M11,
        "    ELSIF u.state = 'cancelled' AND u.worker_id = p_worker_id THEN",
        "    ELSIF false THEN",
        "a result for a cancelled unit is not told it is stale",
        (f"{PROTOCOL}::test_a_late_result_is_rejected_with_its_reason_and_its_images_go_back",),
    ),
    Mutant(
        "submit-end-as-stale",
        M11,
        "    ELSIF u.state = 'cancelled' AND u.worker_id = p_worker_id\n"
        "          AND v_status NOT IN ('running', 'paused') THEN",
        "    ELSIF false THEN",
        "a student whose unit the end of the run cancelled is told it is stale",
        (f"{PROTOCOL}::test_a_result_waiting_when_the_run_ends_is_rejected_with_that_reason",),
    ),
    Mutant(
        "submit-any-attempt",
        M11,
        "ELSIF u.worker_id IS DISTINCT FROM p_worker_id OR u.attempt <> p_attempt THEN",
        "ELSIF u.worker_id IS DISTINCT FROM p_worker_id THEN",
        "a worker whose lease expired submits over its own new claim",
        (f"{LEASES}::test_an_expired_attempt_can_neither_heartbeat_nor_submit_over_the_next_one",),
    ),
    Mutant(
        "submit-any-holder",
        M11,
        "ELSIF u.worker_id IS DISTINCT FROM p_worker_id OR u.attempt <> p_attempt THEN",
        "ELSIF u.attempt <> p_attempt THEN",
        "a worker submits for a unit another worker holds",
        (f"{ROLES}::test_a_student_cannot_submit_for_a_unit_someone_else_holds", PROTOCOL),
    ),
    Mutant(
        "submit-any-state",
        M11,
        "    ELSIF u.state <> 'claimed' THEN",
        "    ELSIF false THEN",
        "a submission for a pending or rejected unit gets past the state check",
        (f"{LEASES}::test_a_refused_result_cannot_be_sent_again",),
    ),
    Mutant(
        "submit-any-run-status",
        M11,
        "    ELSIF v_status NOT IN ('running', 'paused') THEN",
        "    ELSIF false THEN",
        "results are recorded after the run has finished or stopped",
        (f"{LEASES}::test_a_paused_run_hands_out_nothing_and_a_stopped_run_takes_no_result",),
    ),
    Mutant(
        "submit-samples-one",
        M11,
        "VALUES (u.run_id, u.id, p_worker_id, u.version, cardinality(u.indices), p_g_loss,",
        "VALUES (u.run_id, u.id, p_worker_id, u.version, 1, p_g_loss,",
        "every result weighs the same, whatever its unit's size",
        (WEIGHTING,),
    ),
    Mutant(
        "submit-retry-any-attempt",
        M11,
        "    ELSIF u.state IN ('submitted', 'applied') AND u.worker_id = p_worker_id\n"
        "          AND u.attempt = p_attempt THEN",
        "    ELSIF u.state IN ('submitted', 'applied') AND u.worker_id = p_worker_id THEN",
        "an old attempt's late result is told 'already recorded' instead of 'lease lost'",
        (LEASES,),
    ),
    Mutant(
        "submit-size-unchecked",
        M6,
        "    IF v_size > (SELECT (config ->> 'max_payload_bytes')::bigint FROM runs "
        "WHERE id = w.run_id) THEN",
        "    IF false THEN",
        "an oversized one-call submission is not refused with its reason",
        (f"{PAYLOADS}::test_oversized_payloads_are_refused_at_the_door",),
    ),
    # -- who may call ------------------------------------------------------------------------
    Mutant(
        "caller-not-owner",
        M6,
        "    IF w.role_name <> session_user AND NOT ganpool_is_instructor() THEN",
        "    IF false THEN",
        "a student acts for another student's worker",
        (f"{ROLES}::test_a_student_cannot_act_for_another_students_worker",),
    ),
    Mutant(
        "caller-disabled",
        M6,
        "    IF w.disabled AND NOT p_leaving THEN",
        "    IF false THEN",
        "a worker disabled for failed spot checks keeps working",
        (f"{ATTACKS}::test_a_sign_flipper_is_caught_by_spot_checks_held_out_and_disabled",),
    ),
    Mutant(
        "payload-not-waiting",
        M6,
        "    IF r.id IS NULL OR r.status <> 'submitted' THEN",
        "    IF r.id IS NULL THEN",
        "a payload is written for a result already decided",
        (f"{ROLES}::test_a_payload_by_copy_goes_only_to_the_students_own_waiting_result",),
    ),
    Mutant(
        "payload-any-owner",
        M6,
        "    PERFORM ganpool_caller_worker(r.worker_id);  -- the caller's own result",
        "    -- (owner check removed)",
        "a student writes the payload of another student's result",
        (f"{ROLES}::test_a_payload_by_copy_goes_only_to_the_students_own_waiting_result",),
    ),
    Mutant(
        "payload-row-unbounded",
        M6,
        "    IF octet_length(NEW.payload) > ganpool_payload_chunk_bytes() THEN",
        "    IF false THEN",
        "one COPY row of any size is taken: the server buffers it whole before any check",
        (f"{STALLS}::test_an_oversized_upload_is_refused_chunk_by_chunk",),
    ),
    Mutant(
        "payload-total-per-row",
        M6,
        "    IF v_bytes + octet_length(NEW.payload) > v_limit THEN",
        "    IF octet_length(NEW.payload) > v_limit THEN",
        "an upload in many rows, each under the run's limit, passes the limit in all",
        (f"{STALLS}::test_an_oversized_upload_is_refused_chunk_by_chunk", PAYLOADS),
    ),
    # -- giving back, failures, quarantine ----------------------------------------------------
    Mutant(
        "release-any-worker",
        M9,
        "    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt\n"
        "      AND state = 'claimed';\n    RETURN FOUND;",
        "    WHERE id = p_unit_id AND attempt = p_attempt\n      AND state = 'claimed';\n"
        "    RETURN FOUND;",
        "a worker releases a unit another worker holds",
        (f"{LEASES}::test_a_worker_cannot_release_a_unit_another_worker_holds",),
    ),
    Mutant(
        "report-failure-any-worker",
        M9,
        "    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt\n"
        "      AND state = 'claimed'\n    RETURNING * INTO u;",
        "    WHERE id = p_unit_id AND attempt = p_attempt\n      AND state = 'claimed'\n"
        "    RETURNING * INTO u;",
        "a student reports a unit another worker holds: takes it away, counts toward quarantine",
        (FAMILY,),
    ),
    Mutant(
        "report-failure-any-image",
        M9,
        "CASE WHEN p_image_index = ANY (u.indices) THEN p_image_index END",
        "p_image_index",
        "a worker names an image outside its unit bad: never handed out again once quarantined",
        (FAMILY,),
    ),
    Mutant(
        "report-failure-per-copy",
        M9,
        "VALUES (u.run_id, coalesce(u.backup_of, u.id), p_worker_id, ganpool_worker_key(w),",
        "VALUES (u.run_id, u.id, p_worker_id, ganpool_worker_key(w),",
        "reports on a unit's copies never add up to a quarantine of the unit",
        (FAMILY, POISON),
    ),
    Mutant(
        "report-failure-per-worker",
        M9,
        "VALUES (u.run_id, coalesce(u.backup_of, u.id), p_worker_id, ganpool_worker_key(w),",
        "VALUES (u.run_id, coalesce(u.backup_of, u.id), p_worker_id, 'worker:' || w.id,",
        "one student with several workers counts as several reporters: quarantines a unit alone",
        (FAMILY,),
    ),
    Mutant(
        "quarantine-after-one",
        Q,
        "GROUP BY family_id HAVING count(DISTINCT who) >= %(after)s",
        "GROUP BY family_id HAVING count(DISTINCT who) >= least(%(after)s, 1)",
        "one student's report sets a unit aside, whatever quarantine_after says",
        (FAMILY, POISON),
    ),
    Mutant(
        "quarantine-computed-too",
        Q,
        "      AND NOT EXISTS (SELECT 1 FROM work_units AS m\n"
        "                      WHERE coalesce(m.backup_of, m.id) = failing.family_id\n"
        "                        AND m.state IN ('submitted', 'applied'))\n",
        "",
        "a unit some copy computed is set aside all the same (and its images counted twice)",
        (FAMILY,),
    ),
    Mutant(
        "quarantine-good-images-lost",
        Q,
        "UPDATE epochs SET returned = returned || %(indices)s::integer[]",
        "UPDATE epochs SET returned = returned || (%(indices)s::integer[])[1:0]",
        "a quarantined unit's good images never come back to the epoch",
        (POISON,),
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
        "UPDATE epochs AS e SET returned = e.returned || images.indices",
        "UPDATE epochs AS e SET returned = e.returned",
        "a refused or cancelled unit's images never come back to the epoch",
        (f"{PROTOCOL}::test_a_late_result_is_rejected_with_its_reason_and_its_images_go_back",),
    ),
    Mutant(
        "reissue-refused-never",
        Q,
        "WHERE (m.id = f.id OR m.backup_of = f.id) AND m.state = 'rejected')",
        "WHERE (m.id = f.id OR m.backup_of = f.id) AND m.state = 'rejected' AND false)",
        "a refused unit is never sent again: under the alternating rule the run waits for good",
        (f"{DEFAULTS}::test_every_g_result_refused_is_reissued_even_across_a_restart",),
    ),
    # -- the sweeper of stalled student sessions ----------------------------------------------
    Mutant(
        "sweeper-idle-never",
        M6,
        "        WHERE (a.state LIKE 'idle in transaction%'\n",
        "        WHERE (a.state = 'never'\n",
        "a student's session left idle in a transaction keeps its locks for ever",
        (f"{STALLS}::test_a_listener_left_idle_in_a_transaction_is_ended",),
    ),
    Mutant(
        "sweeper-active-never",
        M6,
        "           OR (a.state = 'active' AND a.query_start",
        "           OR (a.state = 'never' AND a.query_start",
        "a student's upload stalled mid-COPY keeps its locks for ever",
        (
            f"{SWEEPER}::test_a_student_statement_running_past_its_limit_is_ended",
            f"{STALLS}::test_a_stalled_upload_is_ended_whatever_timeouts_the_student_set",
        ),
    ),
    # Equivalent (docs/testing.md): the function runs as the owner role, which can see the
    # state of, and end, only its students' sessions; kept as a guard of the join.
    Mutant(
        "sweeper-anyone",
        M6,
        "        SELECT a.pid FROM pg_stat_activity AS a JOIN students AS s "
        "ON s.role_name = a.usename\n",
        "        SELECT a.pid FROM pg_stat_activity AS a\n",
        "the sweeper also ends the coordinator's and the instructor's long sessions",
        (f"{SWEEPER}::test_the_instructors_long_sessions_are_spared", STALLS),
        triaged="equivalent: the owner role can neither see nor end other roles' sessions",
    ),
]

FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)\s*\(", re.IGNORECASE)
QUERY = re.compile(r"^-- (\w+) --$", re.MULTILINE)


def enclosing_function(text: str, at: int) -> str | None:
    """The function whose definition (header to closing $$) holds offset `at`, if any."""
    headers = list(FUNCTION.finditer(text, 0, at + 1))
    if not headers:
        return None
    body = text.find("$$", headers[-1].end())
    end = text.find("$$", body + 2)
    return headers[-1].group(1) if body != -1 and at < end else None


def dead_because(mutant: Mutant, src: Path) -> str | None:
    """Why the mutant's text cannot change behaviour, or None when it is live: it sits in a
    function that a later migration replaces (or drops), or in a named query no code runs."""
    sql = src / SQL
    text = (sql / mutant.file).read_text()
    at = text.index(mutant.find)
    if mutant.file == Q:
        name = [m.group(1) for m in QUERY.finditer(text, 0, at)][-1]
        code = "".join(p.read_text() for p in (src / "ganpool").rglob("*.py"))
        return None if f'"{name}"' in code else f"dead: no code runs the query {name}"
    function = enclosing_function(text, at)
    if function is None:
        return None
    later = re.compile(rf"FUNCTION\s+{function}\s*\(", re.IGNORECASE)
    for path in sorted((sql / "migrations").glob("*.sql")):
        if path.name > Path(mutant.file).name and later.search(path.read_text()):
            return f"dead: {function} is defined again in {path.name}; plant it there"
    return None


def check(mutant: Mutant, src: Path) -> str | None:
    """None when the mutant can be planted where it changes behaviour, else why not."""
    found = (src / SQL / mutant.file).read_text().count(mutant.find)
    if found != 1:
        return f"stale: its text is found {found} times in {mutant.file}"
    return dead_because(mutant, src)


def plant(mutant: Mutant, src: Path) -> str | None:
    """Apply the mutant to the scratch copy; None when done, else why it cannot be."""
    problem = check(mutant, src)
    if problem:
        return problem
    path = src / SQL / mutant.file
    path.write_text(path.read_text().replace(mutant.find, mutant.replace))
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
    parser.add_argument("--check", action="store_true", help="only check each is live")
    parser.add_argument("--again", action="store_true", help="retry mutants with a verdict")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(o in m.id for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.id:28} {m.file:34} {m.bug}")
        return 0
    # A mutant that no longer sits in live SQL would survive for no fault of the tests:
    # refuse to run until the list follows the migrations.
    problems = [(m.id, check(m, ROOT / "src")) for m in chosen]
    problems = [(name, why) for name, why in problems if why]
    for name, why in problems:
        print(f"{name}: {why}", file=sys.stderr)
    if problems or args.check:
        print(f"{len(problems)} of {len(chosen)} mutants not live", file=sys.stderr)
        return 2 if problems else 0
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


def report(verdicts: dict, out: Path = ROOT / "mutants" / "sql-mutants.md") -> int:
    """Write the report and print its summary; exit status 1 if a survivor is not triaged or
    a mutant could not be tried (an error planting or running it)."""
    rows = [(m, verdicts[m.id]) for m in MUTANTS if m.id in verdicts]
    killed = sum(v["status"] in ("killed", "timeout") for _, v in rows)
    tried = sum(v["status"] in ("killed", "timeout", "survived") for _, v in rows)
    open_ = [m.id for m, v in rows if v["status"] == "survived" and not m.triaged]
    summary = (
        f"sql: {killed} of {tried} mutants killed; {len(MUTANTS) - len(rows)} not run, "
        f"{len(rows) - tried} stale or errored; "
        + (f"surviving, not triaged: {', '.join(open_)}" if open_ else "every survivor triaged")
    )
    lines = [f"# {summary}", "", "| mutant | file | bug | status | s | why |", "|---" * 6 + "|"]
    for m, v in rows:
        status = v["status"] + (
            f" (triaged: {m.triaged})" if v["status"] == "survived" and m.triaged else ""
        )
        cells = (m.id, m.file, m.bug, status, str(v["seconds"]), v["why"].replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(summary)
    print(f"report: {out}")
    return 1 if open_ or tried < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())

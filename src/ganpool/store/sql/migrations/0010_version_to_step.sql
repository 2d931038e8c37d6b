-- One definition of the step a version counts as, for the queries that show steps
-- (recent_metrics, all_metrics, dashboard_*): the same rule as
-- ganpool.protocol.vocabulary.version_to_step, which tests/integration/test_vocabulary.py
-- compares it with. A run publishes p_versions_per_step versions a step (2 under the
-- alternating rule); version 0 is the start. Without p_started: the steps completed once
-- p_version is published; with it: the step p_version belongs to, counting a step whose first
-- half (a D phase) alone is published.
--
-- Written as a standard SQL body (RETURN), not a string: its operators are bound when it is
-- created, so no caller's search_path can change what it calls, and it needs no SET
-- search_path clause, which would stop the planner from inlining it (about ten times slower
-- per row of step_metrics). It reads nothing and runs as its caller.
CREATE FUNCTION ganpool_version_to_step(p_version integer, p_versions_per_step integer,
                                        p_started boolean DEFAULT false)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (CASE WHEN p_version < 0 THEN 0 ELSE p_version END
        + CASE WHEN p_started THEN p_versions_per_step - 1 ELSE 0 END) / p_versions_per_step;

-- migrate revokes EXECUTE from PUBLIC after every migration: those who read steps may call it
-- (students cannot read step_metrics, samples or quality).
SELECT ganpool_grant_execute('ganpool_version_to_step(integer, integer, boolean)',
                             'instructor', 'viewer');

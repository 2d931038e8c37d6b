-- One student never stalls or poisons the class (docs/protocol.md, "Stragglers, refusals
-- and poison units").
--
-- * Unit families: a backup copy of a straggling unit, or a reissue of a refused one, is a
--   new row whose `backup_of` names the family's first unit. At most one result of a family
--   is applied, by constraint (version_contributions.family_id is UNIQUE).
-- * Claiming, heartbeats and releases check who is calling before they lock anything; a
--   claim never hands a student a unit whose family (or spot-check pair) that student has
--   already worked on, refused or failed; a student holds at most `max_units_per_student`
--   units; a heartbeat cannot stretch a lease past a bound set by the worker's own speed.
-- * Poison units: a worker that cannot compute a unit (an image that does not decode)
--   reports it; the coordinator quarantines a unit reported by `quarantine_after` workers.

-- backup_of has no foreign key on purpose: inserting a copy would then take a KEY SHARE
-- lock on the straggling unit's row, which the straggler itself may hold locked.
ALTER TABLE work_units ADD COLUMN backup_of bigint;
ALTER TABLE work_units ADD COLUMN images_returned boolean NOT NULL DEFAULT false;
ALTER TABLE work_units ADD COLUMN quarantine_reason text;
ALTER TABLE work_units DROP CONSTRAINT work_units_check;
ALTER TABLE work_units ADD CONSTRAINT work_units_check
    CHECK ((seq IS NULL) = (twin_of IS NOT NULL OR phase_of IS NOT NULL OR backup_of IS NOT NULL));
ALTER TABLE work_units DROP CONSTRAINT work_units_state_check;
ALTER TABLE work_units ADD CONSTRAINT work_units_state_check
    CHECK (state IN ('pending', 'claimed', 'submitted', 'applied', 'rejected', 'cancelled',
                     'quarantined'));
CREATE INDEX work_units_backups ON work_units (backup_of) WHERE backup_of IS NOT NULL;

-- 'superseded': a valid result whose family was already served by another copy's result.
ALTER TABLE results DROP CONSTRAINT results_status_check;
ALTER TABLE results ADD CONSTRAINT results_status_check
    CHECK (status IN ('submitted', 'applied', 'verified', 'rejected', 'superseded'));
-- The norm check judges each network on its own (a phase "both" result carries both).
ALTER TABLE results ADD COLUMN norm_g real;
ALTER TABLE results ADD COLUMN norm_d real;
-- A worker's recent units (the lease bound) and the run's (the backup threshold).
CREATE INDEX results_worker_recent ON results (worker_id, id);
CREATE INDEX results_run_recent ON results (run_id, id);

ALTER TABLE version_contributions ADD COLUMN family_id bigint;
UPDATE version_contributions SET family_id = unit_id;
ALTER TABLE version_contributions ALTER COLUMN family_id SET NOT NULL;
CREATE UNIQUE INDEX version_contributions_family ON version_contributions (family_id);

-- Images of quarantined units count as done for the epoch (they are never retried).
ALTER TABLE epochs ADD COLUMN images_quarantined integer NOT NULL DEFAULT 0;

-- A worker's report that it cannot compute a unit (one row per family and student).
CREATE TABLE unit_failures (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    family_id    bigint NOT NULL,       -- the family's first unit
    worker_id    bigint NOT NULL REFERENCES workers (id),
    who          text NOT NULL,         -- ganpool_worker_key: a student login, or a worker
    image_index  integer,               -- the image that failed, when the worker could tell
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (family_id, who)
);
CREATE INDEX unit_failures_run ON unit_failures (run_id, family_id);

-- Who a worker is, for the rules "different students": a student's login; for any other
-- login (the instructor's own workers, the tests) the worker itself.
CREATE FUNCTION ganpool_worker_key(w workers) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, ganpool, pg_temp AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM students AS s WHERE s.role_name = w.role_name)
                THEN 'login:' || w.role_name
                ELSE 'worker:' || w.id END
$$;

-- Whether the student (or worker) `p_key` has held, computed, or failed on a unit related
-- to c: its family (copies of one unit) or the spot-check pair it belongs to. Each lookup
-- is its own indexed probe (an OR of them is served by no index), and plpgsql keeps the
-- plans: the claim calls this for each candidate it looks at.
CREATE FUNCTION ganpool_touched(c work_units, p_key text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    v_family bigint := coalesce(c.backup_of, c.id);
BEGIN
    RETURN EXISTS (
        WITH related AS (
            SELECT m.id, m.worker_id FROM work_units AS m WHERE m.id = v_family
            UNION ALL
            SELECT m.id, m.worker_id FROM work_units AS m WHERE m.backup_of = v_family
            UNION ALL
            SELECT m.id, m.worker_id FROM work_units AS m WHERE m.twin_of = v_family
            UNION ALL
            SELECT m.id, m.worker_id FROM work_units AS m WHERE m.id = c.twin_of
            UNION ALL
            SELECT m.id, m.worker_id FROM work_units AS m WHERE m.backup_of = c.twin_of
        )
        SELECT 1 FROM related AS r
        WHERE EXISTS (SELECT 1 FROM workers AS w
                      WHERE w.id = r.worker_id AND ganpool_worker_key(w) = p_key)
           OR EXISTS (SELECT 1 FROM results AS x JOIN workers AS w ON w.id = x.worker_id
                      WHERE x.unit_id = r.id AND ganpool_worker_key(w) = p_key)
    ) OR EXISTS (SELECT 1 FROM unit_failures AS f
                 WHERE f.family_id = v_family AND f.who = p_key);
END;
$$;

-- The longest a worker may hold one unit, heartbeats included: `hold_factor` times its own
-- recent time per unit (claim to submission, on the server's clock), else the class's, and
-- never less than the lease. A claimed-and-never-computed unit cannot be kept forever.
CREATE FUNCTION ganpool_hold_limit(p_worker_id bigint, p_run_id bigint) RETURNS interval
LANGUAGE sql STABLE SET search_path = pg_catalog, ganpool, pg_temp AS $$
    WITH cfg AS (
        SELECT (config ->> 'lease_s')::float8 AS lease_s,
               coalesce((config ->> 'hold_factor')::float8, 10) AS factor
        FROM runs WHERE id = p_run_id
    ), mine AS (
        SELECT extract(epoch FROM x.submitted_at - u.claimed_at) AS s
        FROM results AS x JOIN work_units AS u ON u.id = x.unit_id
        WHERE x.worker_id = p_worker_id AND u.worker_id = p_worker_id
        ORDER BY x.id DESC LIMIT 8
    ), class AS (
        SELECT extract(epoch FROM x.submitted_at - u.claimed_at) AS s
        FROM results AS x JOIN work_units AS u ON u.id = x.unit_id
        WHERE x.run_id = p_run_id AND u.worker_id = x.worker_id
        ORDER BY x.id DESC LIMIT 32
    )
    SELECT make_interval(secs => greatest(cfg.lease_s, cfg.factor * coalesce(
        (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) FROM mine),
        (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) FROM class),
        cfg.lease_s)))
    FROM cfg
$$;

-- The caller's worker row, checked WITHOUT locking anything: a call for someone else's
-- worker fails before it has touched a single row lock.
CREATE FUNCTION ganpool_owned_worker(p_worker_id bigint) RETURNS workers
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
BEGIN
    SELECT * INTO w FROM workers WHERE id = p_worker_id;
    IF w.id IS NULL THEN
        RAISE EXCEPTION 'worker % is not registered', p_worker_id USING ERRCODE = 'no_data_found';
    END IF;
    IF w.role_name <> session_user AND NOT ganpool_is_instructor() THEN
        RAISE EXCEPTION 'worker % belongs to another login', p_worker_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN w;
END;
$$;

CREATE OR REPLACE FUNCTION ganpool_claim(p_worker_id bigint)
RETURNS TABLE (unit_id bigint, version integer, indices integer[], noise_seed bigint,
               attempt integer, phase text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
    v_key text;
    v_cap integer;
BEGIN
    w := ganpool_owned_worker(p_worker_id);        -- ownership first, no lock taken
    PERFORM ganpool_caller_worker(p_worker_id);    -- enabled, not disabled (KEY SHARE)
    v_key := ganpool_worker_key(w);
    -- A student holds at most max_units_per_student units, over all their workers.
    IF v_key LIKE 'login:%' THEN
        SELECT coalesce((config ->> 'max_units_per_student')::integer, 4) INTO v_cap
        FROM runs WHERE id = w.run_id;
        IF (SELECT count(*) FROM work_units AS u JOIN workers AS o ON o.id = u.worker_id
            WHERE u.run_id = w.run_id AND u.state = 'claimed'
              AND o.role_name = w.role_name) >= v_cap THEN
            RETURN;
        END IF;
    END IF;
    -- Seen alive: written at most once a second (a write per claim costs at 2,000 claims/s).
    UPDATE workers SET last_heartbeat = now(), left_at = NULL
    WHERE id = p_worker_id AND (last_heartbeat < now() - interval '1 second' OR left_at IS NOT NULL);
    RETURN QUERY
    UPDATE work_units AS u
    SET state = 'claimed', worker_id = p_worker_id, attempt = u.attempt + 1,
        claimed_at = now(), lease_expires_at = now() + ganpool_lease_interval(w.run_id)
    WHERE u.id = (
        SELECT c.id FROM work_units AS c
        JOIN runs AS r ON r.id = c.run_id
        WHERE c.run_id = w.run_id AND c.state = 'pending' AND r.status = 'running'
          -- copies of a unit, and the two halves of a spot check, go to different students
          AND NOT ganpool_touched(c, v_key)
          -- under a robust rule, a copy goes only to a student with no other unit in its
          -- step: backups never give one student two of a step's results
          AND (c.backup_of IS NULL OR r.config ->> 'aggregation' = 'mean'
               OR NOT EXISTS (SELECT 1 FROM work_units AS m JOIN workers AS o
                              ON o.id = m.worker_id
                              WHERE m.run_id = c.run_id AND m.version = c.version
                                AND m.state IN ('claimed', 'submitted', 'applied')
                                AND ganpool_worker_key(o) = v_key))
        ORDER BY c.seq  -- the pending index's order: candidates are checked lazily (copies,
        LIMIT 1         -- whose seq is NULL, come last)
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING u.id, u.version, u.indices, u.noise_seed, u.attempt, u.phase;
END;
$$;

-- Extend the lease on a unit this worker holds, up to its hold limit. False once the unit is
-- no longer this worker's, or its lease has run out.
CREATE OR REPLACE FUNCTION ganpool_heartbeat(p_worker_id bigint, p_unit_id bigint,
                                             p_attempt integer)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
BEGIN
    w := ganpool_owned_worker(p_worker_id);
    PERFORM ganpool_caller_worker(p_worker_id);
    UPDATE workers SET last_heartbeat = now() WHERE id = p_worker_id;
    IF p_unit_id IS NULL THEN
        RETURN true;
    END IF;
    UPDATE work_units
    SET lease_expires_at = least(now() + ganpool_lease_interval(w.run_id),
                                 claimed_at + ganpool_hold_limit(p_worker_id, w.run_id))
    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt
      AND state = 'claimed' AND lease_expires_at > now();
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION ganpool_release(p_worker_id bigint, p_unit_id bigint,
                                           p_attempt integer)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
BEGIN
    PERFORM ganpool_owned_worker(p_worker_id);
    PERFORM ganpool_caller_worker(p_worker_id, true);
    UPDATE work_units
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt
      AND state = 'claimed';
    RETURN FOUND;
END;
$$;

-- A unit this worker cannot compute (an image that does not decode): recorded, given back,
-- and never offered to this student again. The coordinator quarantines it once
-- `quarantine_after` different students have reported it.
CREATE FUNCTION ganpool_report_failure(p_worker_id bigint, p_unit_id bigint, p_attempt integer,
                                       p_image_index integer, p_reason text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
    u work_units%ROWTYPE;
BEGIN
    w := ganpool_owned_worker(p_worker_id);
    PERFORM ganpool_caller_worker(p_worker_id);
    UPDATE work_units
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt
      AND state = 'claimed'
    RETURNING * INTO u;
    IF u.id IS NULL THEN
        RETURN false;  -- not this worker's claim (any more)
    END IF;
    INSERT INTO unit_failures (run_id, family_id, worker_id, who, image_index, reason)
    VALUES (u.run_id, coalesce(u.backup_of, u.id), p_worker_id, ganpool_worker_key(w),
            CASE WHEN p_image_index = ANY (u.indices) THEN p_image_index END,
            left(regexp_replace(coalesce(p_reason, ''), '[[:cntrl:]]', ' ', 'g'), 300))
    ON CONFLICT (family_id, who) DO NOTHING;
    RETURN true;
END;
$$;

-- migrate revokes everything from PUBLIC after each migration; the class's groups get
-- what they need here (their names are the class's own: migration 0006).
SELECT ganpool_grant_execute('ganpool_report_failure(bigint, bigint, integer, integer, text)',
                             'worker', 'instructor'),
       ganpool_grant_execute('ganpool_worker_key(workers)', 'instructor'),
       ganpool_grant_execute('ganpool_touched(work_units, text)', 'instructor'),
       ganpool_grant_execute('ganpool_hold_limit(bigint, bigint)', 'instructor'),
       ganpool_grant_execute('ganpool_owned_worker(bigint)', 'instructor'),
       ganpool_grant_select('unit_failures', 'viewer');
DO $$
BEGIN
    EXECUTE format('GRANT ALL ON unit_failures TO %I', ganpool_class_role('instructor'));
END;
$$;

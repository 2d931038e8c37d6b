-- One live definition of each worker function, one caller check (docs/protocol.md, "Claim,
-- heartbeat, submit"); dead functions dropped; step_metrics keyed by `version`, what it holds.
--
-- Migration 0008 gave claim, heartbeat, release and report_failure a second ownership check,
-- ganpool_owned_worker, in front of ganpool_caller_worker, which since 0006 already checks
-- ownership on an unlocked read before it locks anything. The second check goes; each caller
-- calls ganpool_caller_worker alone, which:
--   1. refuses a disabled student (ganpool_assert_enabled), unless the call only gives work
--      back (p_leaving);
--   2. reads the worker row UNLOCKED and refuses a caller who does not own it (nor is the
--      instructor): a call for someone else's worker fails without taking a single lock;
--   3. only then locks the caller's own row FOR KEY SHARE, the weakest lock, so a claim never
--      waits for its own upload on another connection, while a disable, which locks the row
--      FOR UPDATE, is seen by every call that follows it;
--   4. refuses a disabled worker, unless p_leaving.
-- The bodies below are 0008's, the duplicate check removed; their grants are kept (CREATE OR
-- REPLACE keeps a function's privileges).

CREATE OR REPLACE FUNCTION ganpool_claim(p_worker_id bigint)
RETURNS TABLE (unit_id bigint, version integer, indices integer[], noise_seed bigint,
               attempt integer, phase text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
    v_key text;
    v_cap integer;
BEGIN
    w := ganpool_caller_worker(p_worker_id);
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
    w := ganpool_caller_worker(p_worker_id);
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
CREATE OR REPLACE FUNCTION ganpool_report_failure(p_worker_id bigint, p_unit_id bigint, p_attempt integer,
                                       p_image_index integer, p_reason text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
    u work_units%ROWTYPE;
BEGIN
    w := ganpool_caller_worker(p_worker_id);
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

DROP FUNCTION ganpool_owned_worker(bigint);

-- Dead since their last callers were replaced (0005's claim by 0008's; 0002's submit by
-- 0005's): nothing calls them any more.
DROP FUNCTION ganpool_worked_on(work_units, bigint);
DROP FUNCTION ganpool_reject(bigint, bigint, integer, text);

-- Stored names say what they hold: step_metrics has one row per published version, keyed
-- by that version; a person's "step" is computed from it (protocol.vocabulary.version_to_step,
-- and in the metrics queries `(version + per_step - 1) / per_step`).
ALTER TABLE step_metrics RENAME COLUMN step TO version;

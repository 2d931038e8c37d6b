-- Faster paths (docs/performance.md).
--
-- A worker claims its next unit while it uploads the last one, on two connections. Both
-- calls check the caller's worker row; that check used to lock the row FOR NO KEY UPDATE,
-- so a claim waited for the whole upload. It now takes the weakest lock, KEY SHARE, and a
-- disable takes FOR UPDATE, which still makes a call that follows a disable see it.
CREATE OR REPLACE FUNCTION ganpool_caller_worker(p_worker_id bigint,
                                                 p_leaving boolean DEFAULT false)
RETURNS workers
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
BEGIN
    IF NOT p_leaving THEN
        PERFORM ganpool_assert_enabled();
    END IF;
    SELECT * INTO w FROM workers WHERE id = p_worker_id FOR KEY SHARE;
    IF w.id IS NULL THEN
        RAISE EXCEPTION 'worker % is not registered', p_worker_id USING ERRCODE = 'no_data_found';
    END IF;
    IF w.role_name <> session_user AND NOT ganpool_is_instructor() THEN
        RAISE EXCEPTION 'worker % belongs to another login', p_worker_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF w.disabled AND NOT p_leaving THEN
        RAISE EXCEPTION 'worker % has been disabled: its results kept failing spot checks',
            p_worker_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN w;
END;
$$;

-- Uploading a result by COPY: a payload streams into the server faster than it binds as a
-- parameter (docs/performance.md). In one transaction, a worker calls
-- ganpool_submit_begin, which checks its claim and records the result, then COPYs the
-- payload into result_payloads. A trigger lets a student write only the payload of their
-- own result while it awaits its step, within the run's size limit. A result committed
-- without a payload is refused by the coordinator like any other bad payload.

CREATE FUNCTION ganpool_submit_begin(p_worker_id bigint, p_unit_id bigint, p_attempt integer,
                                     p_g_loss float8, p_d_loss float8, p_d_real float8,
                                     p_d_fake float8, p_compute_seconds float8)
RETURNS TABLE (accepted boolean, reason text, result_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    u work_units%ROWTYPE;
    v_current integer;
    v_status text;
    v_reason text;
    v_result bigint;
BEGIN
    PERFORM ganpool_caller_worker(p_worker_id);
    SELECT * INTO u FROM work_units WHERE id = p_unit_id FOR UPDATE;
    SELECT r.current_version, r.status INTO v_current, v_status FROM runs AS r WHERE r.id = u.run_id;
    IF u.id IS NULL THEN
        v_reason := format('unit %s does not exist', p_unit_id);
    ELSIF u.state = 'cancelled' THEN
        v_reason := format('stale: computed on version %s but the run moved on to version %s; '
                           'its images went back to the epoch', u.version, v_current);
    ELSIF u.state IN ('submitted', 'applied') AND u.worker_id = p_worker_id
          AND u.attempt = p_attempt THEN
        -- A retry after a lost connection whose first try had committed: same answer.
        RETURN QUERY SELECT true, 'already recorded'::text, NULL::bigint;
        RETURN;
    ELSIF u.worker_id IS DISTINCT FROM p_worker_id OR u.attempt <> p_attempt THEN
        v_reason := format('lease lost: unit %s was reissued after your lease expired', u.id);
    ELSIF u.state <> 'claimed' THEN
        v_reason := format('unit %s is already %s', u.id, u.state);
    ELSIF v_status NOT IN ('running', 'paused') THEN
        v_reason := format('the run has %s', v_status);
    END IF;

    IF v_reason IS NOT NULL THEN
        IF u.id IS NOT NULL THEN
            PERFORM ganpool_reject(p_worker_id, u.id, u.version, v_reason);
        END IF;
        RETURN QUERY SELECT false, v_reason, NULL::bigint;
        RETURN;
    END IF;

    INSERT INTO results (run_id, unit_id, worker_id, version, samples, g_loss, d_loss,
                         d_real, d_fake, compute_seconds)
    VALUES (u.run_id, u.id, p_worker_id, u.version, cardinality(u.indices), p_g_loss, p_d_loss,
            p_d_real, p_d_fake, p_compute_seconds)
    RETURNING id INTO v_result;
    UPDATE work_units SET state = 'submitted', lease_expires_at = NULL WHERE id = u.id;
    PERFORM pg_notify('ganpool_results', u.run_id::text);  -- delivered at commit
    RETURN QUERY SELECT true, NULL::text, v_result;
END;
$$;

-- The one-call form (the payload as a parameter) is now the size check, then the above.
CREATE OR REPLACE FUNCTION ganpool_submit(p_worker_id bigint, p_unit_id bigint,
                                          p_attempt integer, p_payload bytea, p_g_loss float8,
                                          p_d_loss float8, p_d_real float8, p_d_fake float8,
                                          p_compute_seconds float8)
RETURNS TABLE (accepted boolean, reason text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    u work_units%ROWTYPE;
    v_reason text;
    b record;
BEGIN
    PERFORM ganpool_caller_worker(p_worker_id);
    SELECT * INTO u FROM work_units WHERE id = p_unit_id;
    IF u.id IS NOT NULL AND octet_length(p_payload) > (
            SELECT (config ->> 'max_payload_bytes')::bigint FROM runs WHERE id = u.run_id) THEN
        v_reason := format('payload of %s bytes exceeds the limit of this run',
                           octet_length(p_payload));
        PERFORM ganpool_reject(p_worker_id, u.id, u.version, v_reason);
        RETURN QUERY SELECT false, v_reason;
        RETURN;
    END IF;
    SELECT * INTO b FROM ganpool_submit_begin(p_worker_id, p_unit_id, p_attempt, p_g_loss,
                                              p_d_loss, p_d_real, p_d_fake, p_compute_seconds);
    IF b.result_id IS NOT NULL THEN
        INSERT INTO result_payloads (result_id, payload) VALUES (b.result_id, p_payload);
    END IF;
    RETURN QUERY SELECT b.accepted, b.reason;
END;
$$;

-- Who may write a payload, and how big: checked per row, so COPY is checked too.
CREATE FUNCTION ganpool_check_payload() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    r results%ROWTYPE;
BEGIN
    SELECT * INTO r FROM results WHERE id = NEW.result_id;
    IF r.id IS NULL OR r.status <> 'submitted' THEN
        RAISE EXCEPTION 'result % is not awaiting a payload', NEW.result_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM ganpool_caller_worker(r.worker_id);  -- the caller's own result (or the instructor)
    IF octet_length(NEW.payload) > (SELECT (config ->> 'max_payload_bytes')::bigint
                                    FROM runs WHERE id = r.run_id) THEN
        RAISE EXCEPTION 'payload of % bytes exceeds the limit of this run',
            octet_length(NEW.payload) USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER result_payloads_check BEFORE INSERT ON result_payloads
    FOR EACH ROW EXECUTE FUNCTION ganpool_check_payload();

REVOKE ALL ON FUNCTION ganpool_submit_begin(bigint, bigint, integer, float8, float8, float8,
                                            float8, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION ganpool_check_payload() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ganpool_submit_begin(bigint, bigint, integer, float8, float8, float8,
                                               float8, float8)
    TO ganpool_worker, ganpool_instructor;
GRANT INSERT ON result_payloads TO ganpool_worker;

-- Claiming: the spot-check rule ("never both copies of a unit to one worker") looked for
-- the twin with an OR that no index serves, so every claim scanned the run's whole unit
-- history. Each direction is now its own indexed lookup.
CREATE INDEX work_units_twins ON work_units (twin_of) WHERE twin_of IS NOT NULL;

-- Whether a worker holds, or has sent a result for, a unit.
CREATE FUNCTION ganpool_worked_on(o work_units, p_worker_id bigint) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT o.worker_id = p_worker_id
        OR EXISTS (SELECT 1 FROM results AS x WHERE x.unit_id = o.id AND x.worker_id = p_worker_id)
$$;
REVOKE ALL ON FUNCTION ganpool_worked_on(work_units, bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ganpool_claim(p_worker_id bigint)
RETURNS TABLE (unit_id bigint, version integer, indices integer[], noise_seed bigint,
               attempt integer, phase text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_run bigint;
BEGIN
    v_run := (ganpool_caller_worker(p_worker_id)).run_id;
    -- Seen alive: written at most once a second (a write per claim costs at 2,000 claims/s).
    UPDATE workers SET last_heartbeat = now(), left_at = NULL
    WHERE id = p_worker_id AND (last_heartbeat < now() - interval '1 second' OR left_at IS NOT NULL);
    RETURN QUERY
    UPDATE work_units AS u
    SET state = 'claimed', worker_id = p_worker_id, attempt = u.attempt + 1,
        claimed_at = now(), lease_expires_at = now() + ganpool_lease_interval(v_run)
    WHERE u.id = (
        SELECT c.id FROM work_units AS c
        JOIN runs AS r ON r.id = c.run_id
        WHERE c.run_id = v_run AND c.state = 'pending' AND r.status = 'running'
          -- never both copies of a spot-checked unit to the same worker
          AND NOT EXISTS (SELECT 1 FROM work_units AS o
                          WHERE o.id = c.twin_of AND ganpool_worked_on(o, p_worker_id))
          AND NOT EXISTS (SELECT 1 FROM work_units AS o
                          WHERE o.twin_of = c.id AND ganpool_worked_on(o, p_worker_id))
        ORDER BY c.seq
        LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING u.id, u.version, u.indices, u.noise_seed, u.attempt, u.phase;
END;
$$;

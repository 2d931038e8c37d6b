-- A worker's whole interface to the database: register, heartbeat, claim, submit, release,
-- leave (plus reading weights and the run's configuration). Each operation is one function
-- and one transaction, so the rules below hold whatever client calls them.

CREATE FUNCTION ganpool_register(p_run_id bigint, p_name text, p_hostname text, p_device text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM runs WHERE id = p_run_id) THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO workers (run_id, name, hostname, device)
    VALUES (p_run_id, p_name, p_hostname, p_device)
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- The lease length is the run's, never the worker's: no one grants themselves a long lease.
CREATE FUNCTION ganpool_lease_interval(p_run_id bigint) RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT make_interval(secs => (config ->> 'lease_s')::double precision)
    FROM runs WHERE id = p_run_id
$$;

-- Claim the oldest pending unit of the run, atomically; nothing when there is none or the
-- run is not running. Expiry uses the server's clock.
CREATE FUNCTION ganpool_claim(p_worker_id bigint)
RETURNS TABLE (unit_id bigint, version integer, indices integer[], noise_seed bigint,
               attempt integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_run bigint;
BEGIN
    UPDATE workers SET last_heartbeat = now(), left_at = NULL
    WHERE id = p_worker_id RETURNING run_id INTO v_run;
    IF v_run IS NULL THEN
        RAISE EXCEPTION 'worker % is not registered', p_worker_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    UPDATE work_units AS u
    SET state = 'claimed', worker_id = p_worker_id, attempt = u.attempt + 1,
        claimed_at = now(), lease_expires_at = now() + ganpool_lease_interval(v_run)
    WHERE u.id = (
        SELECT c.id FROM work_units AS c
        JOIN runs AS r ON r.id = c.run_id
        WHERE c.run_id = v_run AND c.state = 'pending' AND r.status = 'running'
        ORDER BY c.seq
        LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING u.id, u.version, u.indices, u.noise_seed, u.attempt;
END;
$$;

-- Keep the worker alive and extend its lease on the unit it holds. Returns false when the
-- unit is no longer this worker's (its lease expired and the unit went to someone else).
CREATE FUNCTION ganpool_heartbeat(p_worker_id bigint, p_unit_id bigint, p_attempt integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run bigint;
BEGIN
    UPDATE workers SET last_heartbeat = now() WHERE id = p_worker_id RETURNING run_id INTO v_run;
    IF v_run IS NULL OR p_unit_id IS NULL THEN
        RETURN v_run IS NOT NULL;
    END IF;
    UPDATE work_units
    SET lease_expires_at = now() + ganpool_lease_interval(v_run)
    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt
      AND state = 'claimed';
    RETURN FOUND;
END;
$$;

CREATE FUNCTION ganpool_reject(p_worker_id bigint, p_unit_id bigint, p_version integer,
                               p_reason text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rejections (run_id, worker_id, unit_id, version, reason)
    SELECT run_id, p_worker_id, p_unit_id, p_version, p_reason FROM workers WHERE id = p_worker_id
$$;

-- Submit a result and complete its unit in one transaction. The sample count comes from the
-- unit. Accepted only while this worker holds this attempt's claim on a unit still in play;
-- otherwise the refusal and its reason are recorded and returned.
CREATE FUNCTION ganpool_submit(p_worker_id bigint, p_unit_id bigint, p_attempt integer,
                               p_payload bytea, p_g_loss float8, p_d_loss float8, p_d_real float8,
                               p_d_fake float8, p_compute_seconds float8)
RETURNS TABLE (accepted boolean, reason text)
LANGUAGE plpgsql AS $$
DECLARE
    u work_units%ROWTYPE;
    v_current integer;
    v_status text;
    v_reason text;
    v_result bigint;
BEGIN
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
        RETURN QUERY SELECT true, 'already recorded'::text;
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
        RETURN QUERY SELECT false, v_reason;
        RETURN;
    END IF;

    INSERT INTO results (run_id, unit_id, worker_id, version, samples, g_loss, d_loss,
                         d_real, d_fake, compute_seconds)
    VALUES (u.run_id, u.id, p_worker_id, u.version, cardinality(u.indices), p_g_loss, p_d_loss,
            p_d_real, p_d_fake, p_compute_seconds)
    RETURNING id INTO v_result;
    INSERT INTO result_payloads (result_id, payload) VALUES (v_result, p_payload);
    UPDATE work_units SET state = 'submitted', lease_expires_at = NULL WHERE id = u.id;
    UPDATE workers SET last_heartbeat = now() WHERE id = p_worker_id;
    PERFORM pg_notify('ganpool_results', u.run_id::text);
    RETURN QUERY SELECT true, NULL::text;
END;
$$;

-- Give a claimed unit back at once (Ctrl-C), so it need not wait for its lease to expire.
CREATE FUNCTION ganpool_release(p_worker_id bigint, p_unit_id bigint, p_attempt integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE work_units
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt
      AND state = 'claimed';
    RETURN FOUND;
END;
$$;

CREATE FUNCTION ganpool_leave(p_worker_id bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE work_units
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE worker_id = p_worker_id AND state = 'claimed';
    UPDATE workers SET left_at = now() WHERE id = p_worker_id;
END;
$$;

-- A unit cancelled because its run ended is refused as the end of the run, not as stale.
--
-- When a run ends (a limit reached), the coordinator cancels every unit still out. A student
-- who then submits one was told "stale: computed on version 3 but the run moved on to
-- version 3", which is not what happened. ganpool_submit_begin (0006's body, otherwise
-- unchanged) now says "the run has finished" (or "stopped") for a cancelled unit of a run
-- that is over. Its grants are kept (CREATE OR REPLACE keeps a function's privileges).

CREATE OR REPLACE FUNCTION ganpool_submit_begin(p_worker_id bigint, p_unit_id bigint,
                                                p_attempt integer, p_g_loss float8,
                                                p_d_loss float8, p_d_real float8,
                                                p_d_fake float8, p_compute_seconds float8)
RETURNS TABLE (accepted boolean, reason text, result_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    u work_units%ROWTYPE;
    v_current integer;
    v_status text;
    v_reason text;
    v_result bigint;
BEGIN
    PERFORM ganpool_caller_worker(p_worker_id);
    SELECT * INTO u FROM work_units WHERE id = p_unit_id;
    IF u.worker_id = p_worker_id AND u.state = 'claimed' THEN
        -- Ours a moment ago: lock it, re-checked under the lock (the coordinator may have
        -- cancelled or reissued it meanwhile; then read it again, unlocked).
        SELECT * INTO u FROM work_units WHERE id = p_unit_id AND worker_id = p_worker_id
        FOR UPDATE;
        IF u.id IS NULL THEN
            SELECT * INTO u FROM work_units WHERE id = p_unit_id;
        END IF;
    END IF;
    SELECT r.current_version, r.status INTO v_current, v_status FROM runs AS r WHERE r.id = u.run_id;
    IF u.id IS NULL THEN
        v_reason := format('unit %s does not exist', p_unit_id);
    ELSIF u.state = 'cancelled' AND u.worker_id = p_worker_id
          AND v_status NOT IN ('running', 'paused') THEN
        -- Cancelled because the run ended, not because it moved on.
        v_reason := format('the run has %s', v_status);
    ELSIF u.state = 'cancelled' AND u.worker_id = p_worker_id THEN
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
            PERFORM ganpool_reject_unit(p_worker_id, u, v_reason);
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

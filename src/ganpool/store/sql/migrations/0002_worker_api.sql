-- Roles and a worker's whole interface to the database: register, heartbeat, claim,
-- submit, release, leave (plus reading weights, the run's configuration and its own
-- rejections). Each operation is one SECURITY DEFINER function with a fixed search_path,
-- one transaction, and checks who is calling: a student's login can do these and nothing
-- else, whatever client it uses.

-- Group roles (cluster-wide, created once): the instructor's, the students', dashboards'.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ganpool_instructor') THEN
        CREATE ROLE ganpool_instructor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ganpool_worker') THEN
        CREATE ROLE ganpool_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ganpool_viewer') THEN
        CREATE ROLE ganpool_viewer NOLOGIN;
    END IF;
END;
$$;

-- One row per student login. Passwords are never stored here (PostgreSQL keeps only the
-- SCRAM verifier, in pg_authid, which no ganpool role can read).
CREATE TABLE students (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    role_name    name NOT NULL UNIQUE,
    disabled     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz
);

-- Which login registered each worker: set by the database, never by the client.
ALTER TABLE workers ADD COLUMN role_name name NOT NULL DEFAULT session_user;
ALTER TABLE workers ADD COLUMN trust real NOT NULL DEFAULT 1.0;     -- spot-check record
ALTER TABLE workers ADD COLUMN disabled boolean NOT NULL DEFAULT false;

CREATE FUNCTION ganpool_is_instructor() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = session_user), false)
        OR pg_has_role(session_user, 'ganpool_instructor', 'MEMBER')
        OR session_user = (SELECT pg_get_userbyid(datdba) FROM pg_database
                           WHERE datname = current_database())
$$;

-- Refuse a disabled student at once, on every call, mid-run included.
CREATE FUNCTION ganpool_assert_enabled() RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM students WHERE role_name = session_user AND disabled) THEN
        RAISE EXCEPTION 'your access to this class has been disabled by the instructor'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END;
$$;

-- The worker row a call acts for, if the caller owns it (or is the instructor).
-- The row is locked, so a disable committed while this call waited is seen, not missed.
-- Leaving and releasing stay allowed to a disabled worker: they only give work back.
CREATE FUNCTION ganpool_caller_worker(p_worker_id bigint, p_leaving boolean DEFAULT false)
RETURNS workers
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    w workers%ROWTYPE;
BEGIN
    IF NOT p_leaving THEN
        PERFORM ganpool_assert_enabled();
    END IF;
    SELECT * INTO w FROM workers WHERE id = p_worker_id FOR NO KEY UPDATE;
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

-- The caller's own worker ids (row-level security on rejections uses it).
CREATE FUNCTION ganpool_my_workers() RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT id FROM workers WHERE role_name = session_user
$$;

-- The caller's student name ('' for a non-student login): `ganpool worker --join` uses it.
CREATE FUNCTION ganpool_whoami() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT coalesce((SELECT name FROM students WHERE role_name = session_user), '')
$$;

CREATE FUNCTION ganpool_register(p_run_id bigint, p_name text, p_hostname text, p_device text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_id bigint;
    v_student text;
BEGIN
    PERFORM ganpool_assert_enabled();
    -- A student always appears under their own name: no one joins as someone else.
    SELECT name INTO v_student FROM students WHERE role_name = session_user;
    -- Names are shown on leaderboards and terminals: no control characters, bounded length.
    p_name := left(regexp_replace(coalesce(v_student, p_name), '[[:cntrl:]]', '', 'g'), 64);
    IF p_name = '' THEN
        p_name := 'anonymous';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM runs WHERE id = p_run_id) THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO workers (run_id, name, hostname, device, role_name)
    VALUES (p_run_id, p_name, left(regexp_replace(p_hostname, '[[:cntrl:]]', '', 'g'), 128),
            left(regexp_replace(p_device, '[[:cntrl:]]', '', 'g'), 128), session_user)
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- The lease length is the run's, never the worker's: no one grants themselves a long lease.
CREATE FUNCTION ganpool_lease_interval(p_run_id bigint) RETURNS interval
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT make_interval(secs => (config ->> 'lease_s')::double precision)
    FROM runs WHERE id = p_run_id
$$;

-- Claim the oldest pending unit of the run, atomically; nothing when there is none or the
-- run is not running. Expiry uses the server's clock.
CREATE FUNCTION ganpool_claim(p_worker_id bigint)
RETURNS TABLE (unit_id bigint, version integer, indices integer[], noise_seed bigint,
               attempt integer, phase text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_run bigint;
BEGIN
    v_run := (ganpool_caller_worker(p_worker_id)).run_id;
    UPDATE workers SET last_heartbeat = now(), left_at = NULL WHERE id = p_worker_id;
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
                          WHERE (o.id = c.twin_of OR o.twin_of = c.id)
                            AND (o.worker_id = p_worker_id OR EXISTS (
                                 SELECT 1 FROM results AS x
                                 WHERE x.unit_id = o.id AND x.worker_id = p_worker_id)))
        ORDER BY c.seq
        LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING u.id, u.version, u.indices, u.noise_seed, u.attempt, u.phase;
END;
$$;

-- Keep the worker alive and extend its lease on the unit it holds. Returns false when the
-- unit is no longer this worker's (its lease expired and the unit went to someone else).
CREATE FUNCTION ganpool_heartbeat(p_worker_id bigint, p_unit_id bigint, p_attempt integer)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_run bigint;
BEGIN
    v_run := (ganpool_caller_worker(p_worker_id)).run_id;
    UPDATE workers SET last_heartbeat = now() WHERE id = p_worker_id;
    IF p_unit_id IS NULL THEN
        RETURN true;
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
LANGUAGE sql SET search_path = pg_catalog, public, pg_temp AS $$
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
        RETURN QUERY SELECT true, 'already recorded'::text;
        RETURN;
    ELSIF u.worker_id IS DISTINCT FROM p_worker_id OR u.attempt <> p_attempt THEN
        v_reason := format('lease lost: unit %s was reissued after your lease expired', u.id);
    ELSIF u.state <> 'claimed' THEN
        v_reason := format('unit %s is already %s', u.id, u.state);
    ELSIF v_status NOT IN ('running', 'paused') THEN
        v_reason := format('the run has %s', v_status);
    ELSIF octet_length(p_payload) > (SELECT (config ->> 'max_payload_bytes')::bigint
                                     FROM runs WHERE id = u.run_id) THEN
        v_reason := format('payload of %s bytes exceeds the limit of this run',
                           octet_length(p_payload));
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM ganpool_caller_worker(p_worker_id, true);
    UPDATE work_units
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE id = p_unit_id AND worker_id = p_worker_id AND attempt = p_attempt
      AND state = 'claimed';
    RETURN FOUND;
END;
$$;

CREATE FUNCTION ganpool_leave(p_worker_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM ganpool_caller_worker(p_worker_id, true);
    UPDATE work_units
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE worker_id = p_worker_id AND state = 'claimed';
    UPDATE workers SET left_at = now() WHERE id = p_worker_id;
END;
$$;

-- Where a worker's student stands on the run's leaderboard (for `ganpool worker`'s line),
-- without granting students read access to everyone's contributions.
CREATE FUNCTION ganpool_my_standing(p_worker_id bigint)
RETURNS TABLE (place bigint, of_workers bigint, images bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    WITH me AS (SELECT run_id, name FROM workers
                WHERE id = p_worker_id AND (role_name = session_user OR ganpool_is_instructor())),
    board AS (
        SELECT w.name, coalesce(sum(c.samples), 0) AS images
        FROM workers AS w LEFT JOIN version_contributions AS c ON c.worker_id = w.id
        WHERE w.run_id = (SELECT run_id FROM me)
        GROUP BY w.name
    ), ranked AS (
        SELECT name, images, rank() OVER (ORDER BY images DESC) AS place FROM board
    )
    SELECT place, (SELECT count(*) FROM board), images FROM ranked
    WHERE name = (SELECT name FROM me)
$$;

-- Student logins: create, disable, remove. SECURITY INVOKER: the instructor's own
-- CREATEROLE privilege does the work. Names are quoted by format(%I), the password
-- (already a SCRAM verifier, hashed by the client) by format(%L).
CREATE FUNCTION ganpool_student_add(p_name text, p_verifier text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_role name := 'ganpool_s_' || replace(p_name, '-', '_');
BEGIN
    INSERT INTO students (name, role_name) VALUES (p_name, v_role);
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE ganpool_worker', v_role, p_verifier);
    RETURN v_role;
END;
$$;

CREATE FUNCTION ganpool_student_disable(p_name text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_role name;
BEGIN
    UPDATE students SET disabled = true, disabled_at = now()
    WHERE name = p_name RETURNING role_name INTO v_role;
    IF v_role IS NULL THEN
        RAISE EXCEPTION 'no student named %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    EXECUTE format('ALTER ROLE %I NOLOGIN', v_role);
    -- Their claimed units go back to the queue now rather than when the lease runs out.
    UPDATE work_units SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE state = 'claimed'
      AND worker_id IN (SELECT id FROM workers WHERE role_name = v_role);
    RETURN v_role;
END;
$$;

CREATE FUNCTION ganpool_student_enable(p_name text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_role name;
BEGIN
    UPDATE students SET disabled = false, disabled_at = NULL
    WHERE name = p_name RETURNING role_name INTO v_role;
    IF v_role IS NULL THEN
        RAISE EXCEPTION 'no student named %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN', v_role);
    RETURN v_role;
END;
$$;

CREATE FUNCTION ganpool_student_remove(p_name text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_role name;
BEGIN
    DELETE FROM students WHERE name = p_name RETURNING role_name INTO v_role;
    IF v_role IS NULL THEN
        RAISE EXCEPTION 'no student named %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = v_role;
    EXECUTE format('DROP ROLE %I', v_role);
    RETURN v_role;
END;
$$;

-- Privileges. Functions are executable by PUBLIC by default: take that back first.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    ganpool_register(bigint, text, text, text),
    ganpool_claim(bigint),
    ganpool_heartbeat(bigint, bigint, integer),
    ganpool_submit(bigint, bigint, integer, bytea, float8, float8, float8, float8, float8),
    ganpool_release(bigint, bigint, integer),
    ganpool_leave(bigint),
    ganpool_whoami(),
    ganpool_my_workers(),
    ganpool_my_standing(bigint)
TO ganpool_worker, ganpool_instructor;

-- Workers read the run's configuration, published weights and their own rejections.
GRANT SELECT ON runs, version_weights, schema_migrations TO ganpool_worker;
GRANT SELECT ON rejections TO ganpool_worker;

-- Dashboards read everything but payloads, optimiser state and the student list.
GRANT SELECT ON runs, workers, epochs, work_units, results, rejections, versions,
    version_contributions, step_metrics, samples, spot_checks, schema_migrations TO ganpool_viewer;

GRANT ALL ON ALL TABLES IN SCHEMA public TO ganpool_instructor;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ganpool_instructor;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO ganpool_instructor;

-- Row-level security: a worker login sees only its own rejections.
ALTER TABLE rejections ENABLE ROW LEVEL SECURITY;
CREATE POLICY rejections_own ON rejections FOR SELECT TO ganpool_worker
    USING (worker_id IN (SELECT ganpool_my_workers()));
CREATE POLICY rejections_staff ON rejections FOR ALL TO ganpool_viewer, ganpool_instructor
    USING (true);

-- Instructor tools: a new password for a student who lost their join string, and read-only
-- logins for a projector or a teaching assistant. SECURITY INVOKER like the other login
-- functions: the instructor's own CREATEROLE privilege does the work. Names are quoted by
-- format(%I), passwords (SCRAM verifiers, hashed by the client) by format(%L). Role names
-- are the class's own (migration 0006), so two classes on one server never collide.

CREATE FUNCTION ganpool_student_reissue(p_name text, p_verifier text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    v_role name;
BEGIN
    SELECT role_name INTO v_role FROM students WHERE name = p_name;
    IF v_role IS NULL THEN
        RAISE EXCEPTION 'no student named %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    EXECUTE format('ALTER ROLE %I PASSWORD %L', v_role, p_verifier);
    RETURN v_role;
END;
$$;

-- A viewer's login role: ganpool_<class>_v_<name> (63 bytes at most: 8 + 12 + 3 + 40).
CREATE FUNCTION ganpool_viewer_role(p_name text) RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, ganpool, pg_temp AS $$
    SELECT format('ganpool_%s_v_%s', key, replace(p_name, '-', '_'))::name FROM class_roles
$$;

-- A viewer reads what the dashboard shows and nothing else (the class's viewer group).
CREATE FUNCTION ganpool_viewer_add(p_name text, p_verifier text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    v_role name := ganpool_viewer_role(p_name);
BEGIN
    IF p_name !~ '^[a-z0-9][a-z0-9_-]{0,39}$' THEN
        RAISE EXCEPTION 'invalid viewer name %', p_name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I', v_role, p_verifier,
                   ganpool_class_role('viewer'));
    RETURN v_role;
END;
$$;

-- Only this class's viewer logins can be dropped through here.
CREATE FUNCTION ganpool_viewer_remove(p_name text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, ganpool, pg_temp AS $$
DECLARE
    v_role name := ganpool_viewer_role(p_name);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role
                   AND pg_has_role(v_role, ganpool_class_role('viewer'), 'MEMBER')) THEN
        RAISE EXCEPTION 'no viewer named %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = v_role;
    EXECUTE format('DROP ROLE %I', v_role);
    RETURN v_role;
END;
$$;

-- Whether a live session owns a run's coordinator. Any login of the class may ask (a
-- worker says so when it waits for none); the owners table itself stays instructor-only.
CREATE FUNCTION ganpool_coordinator_alive(p_run_id bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ganpool, pg_temp AS $$
    SELECT coalesce((SELECT ganpool_owner_alive(o) FROM owners AS o
                     WHERE o.what = 'coordinator:' || p_run_id), false)
$$;

-- migrate revokes EXECUTE from PUBLIC after every migration: only the instructor may call these.
SELECT ganpool_grant_execute('ganpool_student_reissue(text, text)', 'instructor'),
       ganpool_grant_execute('ganpool_viewer_add(text, text)', 'instructor'),
       ganpool_grant_execute('ganpool_viewer_remove(text)', 'instructor'),
       ganpool_grant_execute('ganpool_coordinator_alive(bigint)', 'instructor', 'worker',
                             'viewer');

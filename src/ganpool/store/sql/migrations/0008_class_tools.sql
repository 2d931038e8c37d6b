-- Instructor tools: a new password for a student who lost their join string, and read-only
-- logins for a projector or a teaching assistant. SECURITY INVOKER like the other login
-- functions: the instructor's own CREATEROLE privilege does the work. Names are quoted by
-- format(%I), passwords (SCRAM verifiers, hashed by the client) by format(%L).

CREATE FUNCTION ganpool_student_reissue(p_name text, p_verifier text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
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

-- A viewer reads what the dashboard shows and nothing else (see ganpool_viewer's grants).
CREATE FUNCTION ganpool_viewer_add(p_name text, p_verifier text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_role name := 'ganpool_v_' || replace(p_name, '-', '_');
BEGIN
    IF p_name !~ '^[a-z0-9][a-z0-9_-]{0,39}$' THEN
        RAISE EXCEPTION 'invalid viewer name %', p_name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE ganpool_viewer', v_role, p_verifier);
    RETURN v_role;
END;
$$;

-- Only roles made by ganpool_viewer_add can be dropped through here.
CREATE FUNCTION ganpool_viewer_remove(p_name text) RETURNS name
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_role name := 'ganpool_v_' || replace(p_name, '-', '_');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role
                   AND pg_has_role(v_role, 'ganpool_viewer', 'MEMBER')) THEN
        RAISE EXCEPTION 'no viewer named %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = v_role;
    EXECUTE format('DROP ROLE %I', v_role);
    RETURN v_role;
END;
$$;

-- New functions are executable by PUBLIC by default: only the instructor may call these.
REVOKE ALL ON FUNCTION ganpool_student_reissue(text, text), ganpool_viewer_add(text, text),
    ganpool_viewer_remove(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ganpool_student_reissue(text, text), ganpool_viewer_add(text, text),
    ganpool_viewer_remove(text) TO ganpool_instructor;

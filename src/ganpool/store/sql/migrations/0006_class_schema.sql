-- A schema and roles of the class's own (docs/security.md, "One class per database").
--
-- Until now every object lived in `public`, the definer functions searched `public`, they
-- ran as whoever migrated (often a superuser), and the group roles were cluster-wide: a
-- student of one class could log in to another class's database and act there. From here:
--
-- * every ganpool object lives in the schema `ganpool`, owned by the class's NOLOGIN,
--   non-superuser owner role; the definer functions run as that role and search
--   `pg_catalog, ganpool, pg_temp` only;
-- * the group roles belong to this database: ganpool_<class>_{owner,instructor,worker,
--   viewer}, where <class> is a short name chosen at the first `ganpool db migrate`
--   (`--class`, else derived from the database's name). Only they may CONNECT here;
-- * students may not CREATE in `public` nor make TEMP objects; their logins carry timeouts,
--   TCP keepalives and a connection limit;
-- * worker functions check ownership before they lock anything;
-- * payloads are stored as bounded chunks, each checked as it arrives;
-- * coordinator and migration ownership rest on a table no student can lock.
--
-- migrate() runs this (and every later migration) with search_path = ganpool: `public.` is
-- written out wherever the old objects are meant. Names keep their ganpool_ prefix.

-- The class's roles. Role names are cluster-wide, so each database gets its own set; a
-- copy of the database (CREATE DATABASE ... TEMPLATE) is the same class and shares them.
DO $$
DECLARE
    v_base text := regexp_replace(
        trim(BOTH '_' FROM regexp_replace(lower(current_database()), '[^a-z0-9]+', '_', 'g')),
        '^[^a-z]+', '');
    v_key text := nullif(current_setting('ganpool.class_key', true), '');
    v_role text;
BEGIN
    IF v_key IS NULL THEN
        v_key := CASE WHEN v_base ~ '^[a-z][a-z0-9_]{0,11}$' THEN v_base
                      ELSE coalesce(nullif(rtrim(left(v_base, 7), '_'), ''), 'class')
                           || '_' || left(md5(current_database()), 4) END;
    END IF;
    IF v_key !~ '^[a-z][a-z0-9_]{0,11}$' THEN
        RAISE EXCEPTION 'class name % is invalid: 1-12 lowercase letters, digits or _, '
                        'starting with a letter', v_key USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH v_role IN ARRAY ARRAY['owner', 'instructor', 'worker', 'viewer'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = format('ganpool_%s_%s', v_key, v_role)) THEN
            RAISE EXCEPTION 'the roles of class % already exist on this server (another '
                            'database uses that class name): migrate with --class NAME', v_key
                USING ERRCODE = 'duplicate_object';
        END IF;
        EXECUTE format('CREATE ROLE %I NOLOGIN', format('ganpool_%s_%s', v_key, v_role));
    END LOOP;
    -- The migrating login is the class's first instructor, and may act as the owner (to
    -- create the schema and, in later migrations, hand new objects over to it).
    EXECUTE format('GRANT %I TO current_user', 'ganpool_' || v_key || '_owner');
    EXECUTE format('GRANT %I TO current_user WITH ADMIN OPTION',
                   'ganpool_' || v_key || '_instructor');
    -- Instructors create student and dashboard logins as members of these groups.
    EXECUTE format('GRANT %I, %I TO %I WITH ADMIN OPTION', 'ganpool_' || v_key || '_worker',
                   'ganpool_' || v_key || '_viewer', 'ganpool_' || v_key || '_instructor');
    EXECUTE format('CREATE SCHEMA ganpool AUTHORIZATION %I', 'ganpool_' || v_key || '_owner');
    CREATE TABLE ganpool.class_roles (
        only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        key         text NOT NULL,
        owner       name NOT NULL,
        instructor  name NOT NULL,
        worker      name NOT NULL,
        viewer      name NOT NULL
    );
    INSERT INTO ganpool.class_roles (key, owner, instructor, worker, viewer)
    VALUES (v_key, 'ganpool_' || v_key || '_owner', 'ganpool_' || v_key || '_instructor',
            'ganpool_' || v_key || '_worker', 'ganpool_' || v_key || '_viewer');
END;
$$;

-- Move everything from public. Identity sequences, indexes, constraints, triggers and
-- policies go along with their tables; the tables' row types too.
DO $$
DECLARE
    v_table text;
    v_function regprocedure;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['schema_migrations', 'runs', 'workers', 'epochs',
            'work_units', 'results', 'result_payloads', 'rejections', 'spot_checks', 'versions',
            'version_weights', 'version_contributions', 'coordinator_state', 'step_metrics',
            'samples', 'students', 'quality', 'datasets', 'dataset_images'] LOOP
        EXECUTE format('ALTER TABLE public.%I SET SCHEMA ganpool', v_table);
    END LOOP;
    FOR v_function IN SELECT p.oid FROM pg_proc AS p
                      WHERE p.pronamespace = 'public'::regnamespace
                        AND p.proname LIKE 'ganpool\_%' LOOP
        EXECUTE format('ALTER ROUTINE %s SET SCHEMA ganpool', v_function);
    END LOOP;
END;
$$;

-- The cluster-wide group roles of earlier versions keep nothing here.
DO $$
DECLARE
    v_old text;
BEGIN
    FOREACH v_old IN ARRAY ARRAY['ganpool_worker', 'ganpool_viewer', 'ganpool_instructor'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = v_old) THEN
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA ganpool FROM %I', v_old);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA ganpool FROM %I', v_old);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ganpool FROM %I', v_old);
        END IF;
    END LOOP;
END;
$$;
DROP POLICY rejections_own ON rejections;
DROP POLICY rejections_staff ON rejections;

-- The class's role names, for the functions below and for the program (join strings,
-- dashboard logins). Not secret: every group of the class may read them.
CREATE FUNCTION ganpool_class_role(p_group text) RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT CASE p_group WHEN 'owner' THEN owner WHEN 'instructor' THEN instructor
                        WHEN 'worker' THEN worker WHEN 'viewer' THEN viewer END
    FROM class_roles
$$;

-- A student's login role: ganpool_<class>_s_<name> (63 bytes at most: 8 + 12 + 3 + 40).
CREATE FUNCTION ganpool_student_role(p_name text) RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT format('ganpool_%s_s_%s', key, replace(p_name, '-', '_'))::name FROM class_roles
$$;

-- Settings every student login carries (ALTER ROLE ... SET). An honest client keeps them;
-- a hostile one can SET them back in its own session, which is why the coordinator also
-- ends stalled student sessions itself (ganpool_end_stalled_sessions).
CREATE FUNCTION ganpool_student_settings() RETURNS TABLE (setting text, value text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('idle_in_transaction_session_timeout', '30s'),  -- a worker's transaction is ms
           ('statement_timeout', '120s'),        -- a 25 MB upload at 1 MB/s fits twice over
           ('lock_timeout', '30s'),
           ('tcp_keepalives_idle', '30'),        -- a vanished laptop is noticed in ~1 min,
           ('tcp_keepalives_interval', '10'),    -- not after the kernel's 2 hours
           ('tcp_keepalives_count', '3'),
           ('tcp_user_timeout', '60s'),          -- the same while data waits to be acked
           ('client_connection_check_interval', '10s')
$$;

-- Connections one student login may hold (a worker uses up to 7: see docs/security.md).
CREATE FUNCTION ganpool_student_connection_limit() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 10 $$;

CREATE FUNCTION ganpool_apply_student_limits(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    EXECUTE format('ALTER ROLE %I CONNECTION LIMIT %s', p_role,
                   ganpool_student_connection_limit());
    FOR s IN SELECT * FROM ganpool_student_settings() LOOP
        EXECUTE format('ALTER ROLE %I SET %I = %L', p_role, s.setting, s.value);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION ganpool_is_instructor() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = session_user), false)
        OR pg_has_role(session_user, ganpool_class_role('instructor'), 'MEMBER')
        OR session_user = (SELECT pg_get_userbyid(datdba) FROM pg_database
                           WHERE datname = current_database())
$$;

-- The worker row a call acts for, if the caller owns it (or is the instructor). Ownership
-- is checked on an unlocked read first: a call for someone else's worker locks nothing.
-- Then the caller's own row is locked (KEY SHARE, as before), so that a disable committed
-- while this call waited is seen, not missed.
CREATE OR REPLACE FUNCTION ganpool_caller_worker(p_worker_id bigint,
                                                 p_leaving boolean DEFAULT false)
RETURNS workers
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    w workers%ROWTYPE;
BEGIN
    IF NOT p_leaving THEN
        PERFORM ganpool_assert_enabled();
    END IF;
    SELECT * INTO w FROM workers WHERE id = p_worker_id;
    IF w.id IS NULL THEN
        RAISE EXCEPTION 'worker % is not registered', p_worker_id USING ERRCODE = 'no_data_found';
    END IF;
    IF w.role_name <> session_user AND NOT ganpool_is_instructor() THEN
        RAISE EXCEPTION 'worker % belongs to another login', p_worker_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT * INTO w FROM workers WHERE id = p_worker_id FOR KEY SHARE;
    IF w.disabled AND NOT p_leaving THEN
        RAISE EXCEPTION 'worker % has been disabled: its results kept failing spot checks',
            p_worker_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN w;
END;
$$;

-- Only a student of this class (or its instructor) joins a run, always under their name.
CREATE OR REPLACE FUNCTION ganpool_register(p_run_id bigint, p_name text, p_hostname text,
                                            p_device text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_id bigint;
    v_student text;
BEGIN
    PERFORM ganpool_assert_enabled();
    SELECT name INTO v_student FROM students WHERE role_name = session_user;
    IF v_student IS NULL AND NOT ganpool_is_instructor() THEN
        RAISE EXCEPTION 'this login is not a student of this class'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
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

-- Record a refusal. The unit is named only when the worker held it: a rejection row locks
-- its unit (the foreign key's KEY SHARE), and a student must not lock others' units.
CREATE OR REPLACE FUNCTION ganpool_reject_unit(p_worker_id bigint, u work_units, p_reason text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rejections (run_id, worker_id, unit_id, version, reason)
    SELECT w.run_id, p_worker_id,
           CASE WHEN u.worker_id = p_worker_id THEN u.id END, u.version, p_reason
    FROM workers AS w WHERE w.id = p_worker_id
$$;

-- Submitting, first half: check the claim and record the result (its payload follows by
-- COPY in the same transaction). The unit is read unlocked first and locked only when this
-- worker holds it: looping over other units' ids locks none of them.
CREATE OR REPLACE FUNCTION ganpool_submit_begin(p_worker_id bigint, p_unit_id bigint,
                                                p_attempt integer, p_g_loss float8,
                                                p_d_loss float8, p_d_real float8,
                                                p_d_fake float8, p_compute_seconds float8)
RETURNS TABLE (accepted boolean, reason text, result_id bigint)
LANGUAGE plpgsql SECURITY DEFINER AS $$
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

-- Payloads are stored in chunks of at most this many bytes: the trigger sees each chunk
-- as it arrives, so an oversized upload is refused after the run's limit, not after the
-- server has buffered all of it.
CREATE FUNCTION ganpool_payload_chunk_bytes() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1048576 $$;

ALTER TABLE result_payloads ADD COLUMN chunk integer NOT NULL DEFAULT 0 CHECK (chunk >= 0);
ALTER TABLE result_payloads DROP CONSTRAINT result_payloads_pkey;
ALTER TABLE result_payloads ADD PRIMARY KEY (result_id, chunk);

-- The one-call form: the size check, then the above, the payload cut into chunks here.
CREATE OR REPLACE FUNCTION ganpool_submit(p_worker_id bigint, p_unit_id bigint,
                                          p_attempt integer, p_payload bytea, p_g_loss float8,
                                          p_d_loss float8, p_d_real float8, p_d_fake float8,
                                          p_compute_seconds float8)
RETURNS TABLE (accepted boolean, reason text)
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    w workers%ROWTYPE;
    u work_units%ROWTYPE;
    v_reason text;
    v_size integer := octet_length(p_payload);
    v_chunk integer := ganpool_payload_chunk_bytes();
    b record;
BEGIN
    w := ganpool_caller_worker(p_worker_id);
    IF v_size > (SELECT (config ->> 'max_payload_bytes')::bigint FROM runs WHERE id = w.run_id) THEN
        v_reason := format('payload of %s bytes exceeds the limit of this run', v_size);
        SELECT * INTO u FROM work_units WHERE id = p_unit_id;
        IF u.id IS NOT NULL THEN
            PERFORM ganpool_reject_unit(p_worker_id, u, v_reason);
        END IF;
        RETURN QUERY SELECT false, v_reason;
        RETURN;
    END IF;
    SELECT * INTO b FROM ganpool_submit_begin(p_worker_id, p_unit_id, p_attempt, p_g_loss,
                                              p_d_loss, p_d_real, p_d_fake, p_compute_seconds);
    IF b.result_id IS NOT NULL THEN
        FOR i IN 0 .. greatest(v_size - 1, 0) / v_chunk LOOP
            INSERT INTO result_payloads (result_id, payload)
            VALUES (b.result_id, substring(p_payload FROM i * v_chunk + 1 FOR v_chunk));
        END LOOP;
    END IF;
    RETURN QUERY SELECT b.accepted, b.reason;
END;
$$;

-- Who may write a payload chunk, and how much: checked per row, so COPY is checked too.
-- Chunks are numbered here, in arrival order; the running total is checked on each.
CREATE OR REPLACE FUNCTION ganpool_check_payload() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r results%ROWTYPE;
    v_chunks integer;
    v_bytes bigint;
    v_limit bigint;
BEGIN
    SELECT * INTO r FROM results WHERE id = NEW.result_id;
    IF r.id IS NULL OR r.status <> 'submitted' THEN
        RAISE EXCEPTION 'result % is not awaiting a payload', NEW.result_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM ganpool_caller_worker(r.worker_id);  -- the caller's own result (or the instructor)
    IF octet_length(NEW.payload) > ganpool_payload_chunk_bytes() THEN
        RAISE EXCEPTION 'a payload row of % bytes exceeds the limit of % bytes per row',
            octet_length(NEW.payload), ganpool_payload_chunk_bytes()
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    SELECT count(*), coalesce(sum(octet_length(payload)), 0) INTO v_chunks, v_bytes
    FROM result_payloads WHERE result_id = NEW.result_id;
    v_limit := (SELECT (config ->> 'max_payload_bytes')::bigint FROM runs WHERE id = r.run_id);
    IF v_bytes + octet_length(NEW.payload) > v_limit THEN
        RAISE EXCEPTION 'payload of over % bytes exceeds the limit of this run (% bytes)',
            v_bytes + octet_length(NEW.payload), v_limit USING ERRCODE = 'program_limit_exceeded';
    END IF;
    NEW.chunk := v_chunks;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION ganpool_leave(p_worker_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM ganpool_caller_worker(p_worker_id, true);
    UPDATE work_units
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE worker_id = p_worker_id AND state = 'claimed';
    UPDATE workers SET left_at = now() WHERE id = p_worker_id;
END;
$$;

-- Student logins (SECURITY INVOKER: the instructor's own CREATEROLE does the work). The
-- class's owner role is made a member of each student role, so that the definer function
-- below may end the student's sessions for a non-superuser instructor too.
DROP FUNCTION ganpool_student_add(text, text);
CREATE FUNCTION ganpool_student_add(p_name text, p_verifier text) RETURNS name
LANGUAGE plpgsql AS $$
DECLARE
    v_role name := ganpool_student_role(p_name);
BEGIN
    INSERT INTO students (name, role_name) VALUES (p_name, v_role);
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I', v_role, p_verifier,
                   ganpool_class_role('worker'));
    PERFORM ganpool_apply_student_limits(v_role);
    EXECUTE format('GRANT %I TO %I', v_role, ganpool_class_role('owner'));
    RETURN v_role;
END;
$$;

-- End a student's sessions and wait (up to 5 s each) until they are gone. Runs as the
-- class's owner, a member of every student role of the class (and of nothing more):
-- pg_terminate_backend allows that, with no superuser or pg_signal_backend needed.
CREATE FUNCTION ganpool_end_student_sessions(p_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_role name;
    v_ended integer := 0;
    v_pid integer;
BEGIN
    IF NOT ganpool_is_instructor() THEN
        RAISE EXCEPTION 'only the instructor may end sessions' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT role_name INTO v_role FROM students WHERE name = p_name;
    IF v_role IS NULL THEN
        RAISE EXCEPTION 'no student named %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    FOR v_pid IN SELECT pid FROM pg_stat_activity WHERE usename = v_role LOOP
        IF pg_terminate_backend(v_pid, 5000) THEN
            v_ended := v_ended + 1;
        END IF;
    END LOOP;
    RETURN v_ended;
END;
$$;

-- A session stuck in a transaction, or running one statement for too long, can hold row
-- locks others need. The role settings above end them on an honest client; this ends
-- them whatever the client SET (students may change their own session's timeouts).
CREATE FUNCTION ganpool_end_stalled_sessions(p_idle_s float8, p_active_s float8)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_ended integer := 0;
    v_pid integer;
BEGIN
    IF NOT ganpool_is_instructor() THEN
        RAISE EXCEPTION 'only the instructor may end sessions' USING ERRCODE = 'insufficient_privilege';
    END IF;
    FOR v_pid IN
        SELECT a.pid FROM pg_stat_activity AS a JOIN students AS s ON s.role_name = a.usename
        WHERE (a.state LIKE 'idle in transaction%'
               AND a.state_change < now() - make_interval(secs => p_idle_s))
           OR (a.state = 'active' AND a.query_start < now() - make_interval(secs => p_active_s))
    LOOP
        IF pg_terminate_backend(v_pid) THEN
            v_ended := v_ended + 1;
        END IF;
    END LOOP;
    RETURN v_ended;
END;
$$;

CREATE OR REPLACE FUNCTION ganpool_student_remove(p_name text) RETURNS name
LANGUAGE plpgsql AS $$
DECLARE
    v_role name;
BEGIN
    PERFORM ganpool_end_student_sessions(p_name);
    DELETE FROM students WHERE name = p_name RETURNING role_name INTO v_role;
    EXECUTE format('DROP ROLE %I', v_role);
    RETURN v_role;
END;
$$;

-- Ownership of a run's coordinator, or of the schema during a migration: a row in a table
-- only instructors may touch (so no student can lock it), naming the session that holds
-- it. That session also holds a session-level advisory lock on a random key stored in the
-- row; the holder is alive while its pid still holds that key and is still the same login.
-- After a database restart no session holds anything, and the next coordinator takes over.
CREATE TABLE owners (
    what       text PRIMARY KEY,
    pid        integer,
    role_oid   oid,
    lock_key   bigint,
    since      timestamptz
);

-- Migrations lock this table (EXCLUSIVE) for their transaction; students have no
-- privilege on it, so none can hold or block that lock.
CREATE TABLE migration_lock (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row));

CREATE FUNCTION ganpool_owner_alive(o owners) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
        WHERE l.pid = o.pid AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid::bigint = o.lock_key >> 32 AND l.objid::bigint = o.lock_key & 4294967295
          AND a.usesysid = o.role_oid)
$$;

-- Take ownership of `p_what`, unless a live session holds it. `p_previous_pid` is the
-- caller's own earlier session (a coordinator reconnecting after a network cut): if that
-- one still holds it, it is ended and ownership taken over.
CREATE FUNCTION ganpool_take_ownership(p_what text, p_previous_pid integer DEFAULT NULL)
RETURNS TABLE (taken boolean, holder_pid integer)
LANGUAGE plpgsql AS $$
DECLARE
    o owners%ROWTYPE;
    v_key bigint;
BEGIN
    INSERT INTO owners (what) VALUES (p_what) ON CONFLICT (what) DO NOTHING;
    SELECT * INTO o FROM owners WHERE what = p_what FOR UPDATE;
    IF o.pid = pg_backend_pid() AND ganpool_owner_alive(o) THEN
        RETURN QUERY SELECT true, o.pid;
        RETURN;
    END IF;
    IF o.pid IS NOT NULL AND ganpool_owner_alive(o) THEN
        IF o.pid IS DISTINCT FROM p_previous_pid
           OR o.role_oid <> (SELECT oid FROM pg_roles WHERE rolname = session_user)
           OR NOT pg_terminate_backend(o.pid, 5000) THEN
            RETURN QUERY SELECT false, o.pid;
            RETURN;
        END IF;
    END IF;
    LOOP  -- a random key in [0, 2^62): no one can have taken it ahead of us, in practice
        v_key := ('x' || left(md5(random()::text || clock_timestamp()::text), 16))::bit(64)::bigint
                 & 4611686018427387903;
        EXIT WHEN pg_try_advisory_lock(v_key);
    END LOOP;
    UPDATE owners
    SET pid = pg_backend_pid(), lock_key = v_key, since = now(),
        role_oid = (SELECT oid FROM pg_roles WHERE rolname = session_user)
    WHERE what = p_what;
    RETURN QUERY SELECT true, pg_backend_pid();
END;
$$;

-- For later migrations: grant to the class's groups without knowing their names.
CREATE FUNCTION ganpool_grant_execute(p_function regprocedure, VARIADIC p_groups text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g text;
BEGIN
    FOREACH g IN ARRAY p_groups LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', p_function, ganpool_class_role(g));
    END LOOP;
END;
$$;

CREATE FUNCTION ganpool_grant_select(p_table regclass, VARIADIC p_groups text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g text;
BEGIN
    FOREACH g IN ARRAY p_groups LOOP
        EXECUTE format('GRANT SELECT ON TABLE %s TO %I', p_table, ganpool_class_role(g));
    END LOOP;
END;
$$;

-- Every function here searches pg_catalog, then ganpool, then pg_temp last, and no one
-- but the owner may create in ganpool: no student can shadow a name a function uses.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_proc AS p WHERE p.pronamespace = 'ganpool'::regnamespace LOOP
        EXECUTE format('ALTER ROUTINE %s SET search_path = pg_catalog, ganpool, pg_temp', f);
    END LOOP;
END;
$$;

-- Privileges, to the class's groups.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ganpool FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA ganpool FROM PUBLIC;
DO $$
DECLARE
    c class_roles%ROWTYPE;
    v_role name;
BEGIN
    SELECT * INTO c FROM class_roles;
    EXECUTE format('GRANT USAGE ON SCHEMA ganpool TO %I, %I, %I', c.instructor, c.worker,
                   c.viewer);
    EXECUTE format($f$GRANT EXECUTE ON FUNCTION
        ganpool_register(bigint, text, text, text), ganpool_claim(bigint),
        ganpool_heartbeat(bigint, bigint, integer),
        ganpool_submit(bigint, bigint, integer, bytea, float8, float8, float8, float8, float8),
        ganpool_submit_begin(bigint, bigint, integer, float8, float8, float8, float8, float8),
        ganpool_release(bigint, bigint, integer), ganpool_leave(bigint), ganpool_whoami(),
        ganpool_my_workers(), ganpool_my_standing(bigint) TO %I$f$, c.worker);
    EXECUTE format('GRANT SELECT ON runs, version_weights, schema_migrations, rejections, '
                   'datasets, dataset_images, class_roles TO %I', c.worker);
    EXECUTE format('GRANT INSERT ON result_payloads TO %I', c.worker);
    EXECUTE format('GRANT SELECT ON runs, workers, epochs, work_units, results, rejections, '
                   'versions, version_contributions, step_metrics, samples, spot_checks, '
                   'schema_migrations, quality, datasets, dataset_images, class_roles TO %I', c.viewer);
    EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA ganpool TO %I', c.instructor);
    EXECUTE format('GRANT ALL ON ALL SEQUENCES IN SCHEMA ganpool TO %I', c.instructor);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ganpool TO %I', c.instructor);
    -- Row-level security: a worker login sees only its own rejections.
    EXECUTE format('CREATE POLICY rejections_own ON rejections FOR SELECT TO %I '
                   'USING (worker_id IN (SELECT ganpool_my_workers()))', c.worker);
    EXECUTE format('CREATE POLICY rejections_staff ON rejections FOR ALL TO %I, %I '
                   'USING (true)', c.viewer, c.instructor);
    -- Students of earlier versions: into this class's group, with the new limits, and out
    -- of the old cluster-wide group.
    FOR v_role IN SELECT s.role_name FROM students AS s JOIN pg_roles AS r ON r.rolname = s.role_name
    LOOP
        EXECUTE format('GRANT %I TO %I', c.worker, v_role);
        EXECUTE format('GRANT %I TO %I', v_role, c.owner);
        PERFORM ganpool_apply_student_limits(v_role);
        IF pg_has_role(v_role, 'ganpool_worker', 'MEMBER') THEN
            BEGIN
                EXECUTE format('REVOKE ganpool_worker FROM %I', v_role);
            EXCEPTION WHEN insufficient_privilege THEN
                -- Harmless if it stays: the old group holds nothing in this database.
                RAISE WARNING 'could not revoke ganpool_worker from %: %', v_role, SQLERRM;
            END;
        END IF;
    END LOOP;
END;
$$;

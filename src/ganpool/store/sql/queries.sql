-- Named queries: the contract between Python and the database.
-- Each starts with a `-- name --` line and a line saying what it does.
-- Parameters are %(name)s placeholders, always bound by psycopg, never formatted in.

-- insert_run --
-- Create a run with its whole configuration and dataset fingerprint.
INSERT INTO runs (name, config, dataset_fingerprint, dataset_size)
VALUES (%(name)s, %(config)s, %(fingerprint)s, %(dataset_size)s)
RETURNING id;

-- run_by_name --
-- A run's row, looked up by its name.
SELECT id, name, config, dataset_fingerprint, dataset_size, status, current_version,
       units_issued, images_applied, created_at, started_at, finished_at
FROM runs WHERE name = %(name)s;

-- latest_run --
-- The most recently created run, for commands given no --run.
SELECT name FROM runs ORDER BY id DESC LIMIT 1;

-- lock_run --
-- Lock the run's row for the length of a coordinator transaction. NO KEY UPDATE, not
-- UPDATE: submissions take KEY SHARE on it (their results' foreign key) and must not wait
-- for a step, nor deadlock with one.
SELECT id, status, current_version, units_issued, images_applied,
       extract(epoch FROM now() - version_started_at) AS version_age_s,
       extract(epoch FROM now() - started_at) AS running_s
FROM runs WHERE id = %(run_id)s FOR NO KEY UPDATE;

-- start_run --
-- Mark a run running (first start or resume after a coordinator restart).
UPDATE runs SET status = 'running', started_at = coalesce(started_at, now())
WHERE id = %(run_id)s AND status IN ('created', 'running');

-- set_run_status --
-- Pause, resume, finish or stop a run.
UPDATE runs
SET status = %(status)s,
    finished_at = CASE WHEN %(status)s IN ('finished', 'stopped') THEN now() END
WHERE id = %(run_id)s;

-- notify_run_status --
-- Wake every listener so workers notice a pause, a resume or the end at once.
SELECT pg_notify('ganpool_version', %(run_id)s::text || ':status');

-- open_epochs --
-- Epochs that still have images to hand out, oldest first.
SELECT epoch, seed, size, cursor, returned
FROM epochs
WHERE run_id = %(run_id)s AND (cursor < size OR cardinality(returned) > 0)
ORDER BY epoch;

-- last_epoch --
-- The newest epoch number, or NULL before the first.
SELECT max(epoch) AS epoch FROM epochs WHERE run_id = %(run_id)s;

-- insert_epoch --
-- Open a new epoch with its permutation seed.
INSERT INTO epochs (run_id, epoch, seed, size)
VALUES (%(run_id)s, %(epoch)s, %(seed)s, %(size)s);

-- save_epoch --
-- Record how far an epoch's permutation has been handed out.
UPDATE epochs SET cursor = %(cursor)s, returned = %(returned)s
WHERE run_id = %(run_id)s AND epoch = %(epoch)s;

-- give_back --
-- Return a unit's images to its epoch so they are issued again.
UPDATE epochs SET returned = returned || %(indices)s::integer[]
WHERE run_id = %(run_id)s AND epoch = %(epoch)s;

-- count_epoch_images --
-- Count images applied within an epoch, and close it when all are in (quarantined
-- images count as done: they are never retried).
UPDATE epochs
SET images_applied = images_applied + %(images)s,
    completed_at = CASE WHEN images_applied + images_quarantined + %(images)s = size
                        THEN now() END
WHERE run_id = %(run_id)s AND epoch = %(epoch)s;

-- epochs_completed --
-- Fractional epochs: whole epochs completed plus the share of the open one (quarantined
-- images count as done).
SELECT coalesce(sum((images_applied + images_quarantined)::double precision / size), 0) AS epochs
FROM epochs WHERE run_id = %(run_id)s;

-- insert_unit --
-- Issue one work unit for a version.
INSERT INTO work_units (run_id, seq, version, epoch, indices, noise_seed, phase)
VALUES (%(run_id)s, %(seq)s, %(version)s, %(epoch)s, %(indices)s, %(noise_seed)s, %(phase)s)
RETURNING id;

-- insert_twin --
-- Issue a spot check: the same unit again, for a different worker (no seq of its own).
INSERT INTO work_units (run_id, seq, version, epoch, indices, noise_seed, phase, twin_of)
SELECT run_id, NULL, version, epoch, indices, noise_seed, phase, id
FROM work_units WHERE id = %(unit_id)s;

-- set_units_issued --
-- Advance the run's unit counter (the next unit's seq).
UPDATE runs SET units_issued = %(units_issued)s WHERE id = %(run_id)s;

-- count_live_units --
-- Units of a version still in play (pending, claimed or submitted), counting a unit and its
-- backup copies once; spot-check twins aside.
SELECT count(DISTINCT coalesce(backup_of, id)) AS n FROM work_units
WHERE run_id = %(run_id)s AND version = %(version)s AND twin_of IS NULL
  AND state IN ('pending', 'claimed', 'submitted');

-- expire_leases --
-- Put units whose lease ran out (on the server's clock) back in the queue. A unit a student
-- holds locked (an upload stalled mid-COPY) is skipped, not waited for: the next tick sees it.
UPDATE work_units
SET state = 'pending', worker_id = NULL, lease_expires_at = NULL, reissued = reissued + 1
WHERE id IN (SELECT id FROM work_units
             WHERE run_id = %(run_id)s AND state = 'claimed' AND lease_expires_at < now()
             FOR UPDATE SKIP LOCKED)
RETURNING id;

-- waiting_results --
-- Results submitted for a version and not yet decided, in unit order (first arrived first
-- within a family of copies), locked.
SELECT r.id, r.unit_id, r.worker_id, r.samples, r.g_loss, r.d_loss, r.d_real, r.d_fake,
       u.epoch, u.indices, u.twin_of, u.phase, coalesce(u.backup_of, u.id) AS family,
       coalesce(u.seq, b.seq, t.seq, p.seq, pb.seq, tp.seq, tpb.seq) AS seq
FROM results AS r
JOIN work_units AS u ON u.id = r.unit_id
LEFT JOIN work_units AS b ON b.id = u.backup_of      -- a copy: its unit's
LEFT JOIN work_units AS t ON t.id = u.twin_of        -- a twin: its original's
LEFT JOIN work_units AS p ON p.id = u.phase_of       -- a G unit: its D unit's ...
LEFT JOIN work_units AS pb ON pb.id = p.backup_of    -- ... or the unit that D unit copied
LEFT JOIN work_units AS tp ON tp.id = t.phase_of
LEFT JOIN work_units AS tpb ON tpb.id = tp.backup_of
WHERE r.run_id = %(run_id)s AND r.version = %(version)s AND r.status = 'submitted'
ORDER BY coalesce(u.seq, b.seq, t.seq, p.seq, pb.seq, tp.seq, tpb.seq), u.twin_of NULLS FIRST,
         r.id
-- A row a student holds locked is left for a later tick rather than waited for.
FOR UPDATE OF r, u SKIP LOCKED;

-- count_waiting_results --
-- For a version: units (families of copies) with a result waiting to be applied, units
-- still in play (a G phase has only as many as its D phase applied, less those refused
-- everywhere), and spot checks being computed that are still worth waiting for (claimed
-- less than `patience_s` ago).
SELECT
    (SELECT count(DISTINCT coalesce(backup_of, id)) FROM work_units
     WHERE run_id = %(run_id)s AND version = %(version)s AND twin_of IS NULL
       AND state IN ('pending', 'claimed', 'submitted')) AS open,
    (SELECT count(DISTINCT coalesce(u.backup_of, u.id))
     FROM results AS r JOIN work_units AS u ON u.id = r.unit_id
     WHERE r.run_id = %(run_id)s AND r.version = %(version)s AND r.status = 'submitted'
       AND u.twin_of IS NULL) AS n,
    (SELECT count(*) FROM work_units
     WHERE run_id = %(run_id)s AND version = %(version)s AND twin_of IS NOT NULL
       AND state = 'claimed'
       AND claimed_at > now() - make_interval(secs => %(patience_s)s)) AS twins_computing;

-- apply_result --
-- Mark a result and its unit applied, and record what it contributed to which version.
-- family_id is UNIQUE: of a unit and its backup copies, one result at most is applied.
WITH r AS (
    UPDATE results SET status = 'applied', decided_at = now()
    WHERE id = %(result_id)s AND status = 'submitted'
    RETURNING id, unit_id, worker_id, samples
), u AS (
    UPDATE work_units SET state = 'applied' FROM r WHERE work_units.id = r.unit_id
    RETURNING work_units.id, coalesce(work_units.backup_of, work_units.id) AS family
)
INSERT INTO version_contributions (run_id, version, unit_id, result_id, worker_id, samples, weight,
                                   family_id)
SELECT %(run_id)s, %(version)s, r.unit_id, r.id, r.worker_id, r.samples, %(weight)s, u.family
FROM r JOIN u ON u.id = r.unit_id;

-- reject_result --
-- Refuse a submitted result: record why, and mark it and its unit rejected.
WITH r AS (
    UPDATE results SET status = 'rejected', decided_at = now()
    WHERE id = %(result_id)s AND status = 'submitted'
    RETURNING unit_id, worker_id, version
), u AS (
    UPDATE work_units SET state = 'rejected' FROM r WHERE work_units.id = r.unit_id
)
INSERT INTO rejections (run_id, worker_id, unit_id, version, reason)
SELECT %(run_id)s, r.worker_id, r.unit_id, r.version, %(reason)s FROM r;

-- copy_result_payload --
-- One result's payload, streamed out by COPY in its chunks, in order (faster than a binary
-- SELECT for 25 MB).
COPY (SELECT payload FROM result_payloads WHERE result_id = %(result_id)s ORDER BY chunk)
TO STDOUT (FORMAT BINARY);

-- arrived_results --
-- Results of a version that have landed and await their step (read as they arrive).
SELECT r.id, r.samples, u.twin_of, u.phase, coalesce(u.backup_of, u.id) AS family
FROM results AS r JOIN work_units AS u ON u.id = r.unit_id
WHERE r.run_id = %(run_id)s AND r.version = %(version)s AND r.status = 'submitted'
ORDER BY r.id;

-- delete_payload --
-- Drop a decided result's tensors: applied or rejected, they are never read again.
DELETE FROM result_payloads WHERE result_id = %(result_id)s;

-- cancel_stale_units --
-- Cancel the units of older versions that no result came back for (give_back_unapplied
-- returns their images). Rows a student holds locked are left for a later tick.
UPDATE work_units
SET state = 'cancelled', lease_expires_at = NULL
WHERE id IN (SELECT id FROM work_units
             WHERE run_id = %(run_id)s AND version < %(version)s AND state IN ('pending', 'claimed')
             FOR UPDATE SKIP LOCKED)
RETURNING id;

-- stale_results --
-- Results of older versions still waiting: they lost the race to form their step.
SELECT r.id, r.worker_id, u.epoch, u.indices, u.twin_of, u.phase, r.version
FROM results AS r JOIN work_units AS u ON u.id = r.unit_id
WHERE r.run_id = %(run_id)s AND r.version < %(version)s AND r.status = 'submitted'
FOR UPDATE OF r SKIP LOCKED;

-- insert_version --
-- Record a published version.
INSERT INTO versions (run_id, version, images, epoch, is_milestone)
VALUES (%(run_id)s, %(version)s, %(images)s, %(epoch)s, %(is_milestone)s);

-- copy_weights --
-- Store a version's weights by COPY (binary rows: run_id, version, weights).
COPY version_weights (run_id, version, weights) FROM STDIN (FORMAT BINARY);

-- replay_contributions --
-- The results that formed a version, in the order the step took them (for a replay).
SELECT c.result_id AS id, c.samples, u.phase, coalesce(u.seq, b.seq, p.seq, pb.seq) AS seq
FROM version_contributions AS c
JOIN work_units AS u ON u.id = c.unit_id
LEFT JOIN work_units AS b ON b.id = u.backup_of
LEFT JOIN work_units AS p ON p.id = u.phase_of
LEFT JOIN work_units AS pb ON pb.id = p.backup_of
WHERE c.run_id = %(run_id)s AND c.version = %(version)s
ORDER BY coalesce(u.seq, b.seq, p.seq, pb.seq), c.result_id;

-- delete_checkpointed_payloads --
-- Applied results are kept until a checkpoint holds their effect; then they can go.
DELETE FROM result_payloads AS p
USING version_contributions AS c
WHERE c.result_id = p.result_id AND c.run_id = %(run_id)s AND c.version <= %(version)s;

-- delete_coordinator_state --
-- Make way for a new checkpoint (in the same transaction as its COPY).
DELETE FROM coordinator_state WHERE run_id = %(run_id)s;

-- copy_coordinator_state --
-- The checkpoint: the optimiser state of one version, by COPY (binary rows: run_id,
-- version, optimizer). A restart replays what came after it.
COPY coordinator_state (run_id, version, optimizer) FROM STDIN (FORMAT BINARY);

-- coordinator_state --
-- The checkpoint's version and optimiser state.
SELECT version, optimizer FROM coordinator_state WHERE run_id = %(run_id)s;

-- prune_weights --
-- Drop weights older than the kept window, except milestones.
DELETE FROM version_weights AS w
USING versions AS v
WHERE w.run_id = %(run_id)s AND w.version < %(keep_from)s
  AND v.run_id = w.run_id AND v.version = w.version AND NOT v.is_milestone;

-- publish_version --
-- Make a version current and count its images.
UPDATE runs
SET current_version = %(version)s, images_applied = images_applied + %(images)s,
    version_started_at = now()
WHERE id = %(run_id)s;

-- notify_version --
-- Tell listening workers a new version is out (delivered at commit).
SELECT pg_notify('ganpool_version', %(run_id)s::text || ':' || %(version)s::text);

-- insert_step_metrics --
-- One published version's losses and contributors (its row in step_metrics).
INSERT INTO step_metrics (run_id, version, g_loss, d_loss, d_real, d_fake, workers, units,
                          images, epoch)
VALUES (%(run_id)s, %(version)s, %(g_loss)s, %(d_loss)s, %(d_real)s, %(d_fake)s, %(workers)s,
        %(units)s, %(images)s, %(epoch)s);

-- insert_sample --
-- A sample grid (PNG) drawn from fixed noise at a version.
INSERT INTO samples (run_id, version, png) VALUES (%(run_id)s, %(version)s, %(png)s)
ON CONFLICT (run_id, version) DO NOTHING;

-- current_weights --
-- The newest published version and its weights (read with a binary cursor).
SELECT r.current_version AS version, w.weights
FROM runs AS r JOIN version_weights AS w ON w.run_id = r.id AND w.version = r.current_version
WHERE r.id = %(run_id)s;

-- weights_at --
-- One version's weights, if still kept.
SELECT weights FROM version_weights WHERE run_id = %(run_id)s AND version = %(version)s;

-- copy_weights_at --
-- One version's weights streamed out by COPY (what a worker downloads), if still kept.
COPY (SELECT weights FROM version_weights WHERE run_id = %(run_id)s AND version = %(version)s)
TO STDOUT (FORMAT BINARY);

-- run_state --
-- What a worker polls between units: status and newest version.
SELECT status, current_version FROM runs WHERE id = %(run_id)s;

-- register_worker --
-- Join a run.
SELECT ganpool_register(%(run_id)s, %(name)s, %(hostname)s, %(device)s) AS worker_id;

-- heartbeat --
-- Stay alive and extend the lease on the unit held; false means the lease was lost.
SELECT ganpool_heartbeat(%(worker_id)s, %(unit_id)s, %(attempt)s) AS holds;

-- claim_unit --
-- Claim the next pending unit, if any.
SELECT unit_id, version, indices, noise_seed, attempt, phase FROM ganpool_claim(%(worker_id)s);

-- submit_result --
-- Upload a result and complete its unit in one transaction.
SELECT accepted, reason
FROM ganpool_submit(%(worker_id)s, %(unit_id)s, %(attempt)s, %(payload)s, %(g_loss)s,
                    %(d_loss)s, %(d_real)s, %(d_fake)s, %(compute_seconds)s);

-- submit_begin --
-- Check the claim and record a result whose payload follows by COPY, same transaction.
SELECT accepted, reason, result_id
FROM ganpool_submit_begin(%(worker_id)s, %(unit_id)s, %(attempt)s, %(g_loss)s, %(d_loss)s,
                          %(d_real)s, %(d_fake)s, %(compute_seconds)s);

-- copy_payload --
-- A result's payload by COPY, in chunks of at most ganpool_payload_chunk_bytes() (binary
-- rows: result_id, chunk; the trigger numbers the chunks in arrival order).
COPY result_payloads (result_id, payload) FROM STDIN (FORMAT BINARY);

-- release_unit --
-- Give a claimed unit back without a result.
SELECT ganpool_release(%(worker_id)s, %(unit_id)s, %(attempt)s) AS released;

-- leave_run --
-- Leave the run, releasing any claim.
SELECT ganpool_leave(%(worker_id)s);

-- worker_rejections --
-- A worker's rejections after a given id, for it to print.
SELECT id, unit_id, version, reason FROM rejections
WHERE worker_id = %(worker_id)s AND id > %(after_id)s ORDER BY id;

-- run_summary --
-- Key figures of a run for `status` and the demo's summary.
SELECT r.name, r.status, r.current_version, r.images_applied, r.dataset_size,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at) AS running_s,
       (SELECT count(*) FROM work_units WHERE run_id = r.id AND state = 'applied') AS units_applied,
       (SELECT count(*) FROM rejections WHERE run_id = r.id) AS units_rejected,
       (SELECT coalesce(sum(reissued), 0) FROM work_units WHERE run_id = r.id) AS units_reissued,
       (SELECT count(*) FROM work_units WHERE run_id = r.id AND backup_of IS NOT NULL)
           AS units_copied,
       (SELECT count(*) FROM work_units WHERE run_id = r.id AND state = 'quarantined'
          AND backup_of IS NULL) AS units_quarantined,
       (SELECT count(*) FROM workers
        WHERE run_id = r.id AND left_at IS NULL
          AND last_heartbeat > now() - make_interval(secs => (r.config ->> 'lease_s')::float8))
           AS workers_online,
       (SELECT coalesce(sum(images_applied::double precision / size), 0)
        FROM epochs WHERE run_id = r.id) AS epochs
FROM runs AS r WHERE r.id = %(run_id)s;

-- leaderboard --
-- Accepted images and units per worker name, and their rejections. An image counts once:
-- a G-phase unit reuses its D phase's images (its unit counts, its images do not).
SELECT w.name,
       coalesce(sum(c.samples) FILTER (WHERE u.phase <> 'G'), 0) AS images,
       count(c.unit_id) AS units,
       (SELECT count(*) FROM rejections AS j JOIN workers AS w2 ON w2.id = j.worker_id
        WHERE w2.run_id = %(run_id)s AND w2.name = w.name) AS rejected
FROM workers AS w
LEFT JOIN version_contributions AS c ON c.worker_id = w.id
LEFT JOIN work_units AS u ON u.id = c.unit_id
WHERE w.run_id = %(run_id)s
GROUP BY w.name
ORDER BY images DESC, w.name;

-- recent_metrics --
-- The last few completed steps' metrics, newest last. A step is the paper's: under the
-- alternating rule its D phase (D loss, D(x), D(G(z))) and G phase (G loss) are two rows
-- of step_metrics, one per published version, and each column is set in one of them.
SELECT * FROM (
    SELECT ganpool_version_to_step(version, %(per_step)s::int, true) AS step,
           avg(g_loss) AS g_loss, avg(d_loss) AS d_loss, avg(d_real) AS d_real,
           avg(d_fake) AS d_fake, max(workers) AS workers, max(images) AS images,
           max(epoch) AS epoch
    FROM step_metrics WHERE run_id = %(run_id)s
    GROUP BY 1 HAVING count(*) = %(per_step)s::int
    ORDER BY 1 DESC LIMIT %(limit)s
) AS m ORDER BY step;

-- all_metrics --
-- Every completed step's metrics in the paper's steps (see recent_metrics), for export.
SELECT ganpool_version_to_step(version, %(per_step)s::int, true) AS step,
       avg(g_loss) AS g_loss, avg(d_loss) AS d_loss, avg(d_real) AS d_real,
       avg(d_fake) AS d_fake, max(workers) AS workers, sum(units) AS units,
       max(images) AS images, max(epoch) AS epoch, max(created_at) AS created_at
FROM step_metrics WHERE run_id = %(run_id)s
GROUP BY 1 HAVING count(*) = %(per_step)s::int
ORDER BY 1;

-- run_throughput --
-- The one measure of a run's speed: images that entered a step (a G phase reuses its D
-- phase's images and adds none) in the last minute of the run's life, and the seconds of
-- that minute it has been running.
SELECT coalesce((SELECT sum(v.images) FROM versions AS v
                 WHERE v.run_id = r.id
                   AND v.created_at > coalesce(r.finished_at, now()) - interval '60 seconds'),
                0) AS images,
       least(60, coalesce(extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at), 0))
           AS seconds
FROM runs AS r WHERE r.id = %(run_id)s;

-- change_run_status --
-- Pause, resume or stop a run, only from a state the action applies to (a finished or
-- stopped run stays so); no row back means the run was in none of them.
UPDATE runs
SET status = %(status)s,
    finished_at = CASE WHEN %(status)s IN ('finished', 'stopped') THEN now() END
WHERE id = %(run_id)s AND status = ANY(%(allowed)s::text[])
RETURNING status;

-- delete_run --
-- Delete a run and, by cascade, every row that belongs to it.
DELETE FROM runs WHERE id = %(run_id)s RETURNING name;

-- coordinator_alive --
-- Whether a live session owns the run's coordinator (a definer function: students may ask).
SELECT ganpool_coordinator_alive(%(run_id)s) AS alive;

-- lock_migrations --
-- One migrator at a time (released at commit), by a lock no student can take or block:
-- a table on which students have no privilege at all. (A database with no ganpool schema
-- yet has no student logins: an advisory lock does there.)
DO $$
BEGIN
    IF to_regclass('ganpool.migration_lock') IS NOT NULL THEN
        LOCK TABLE ganpool.migration_lock IN EXCLUSIVE MODE;
    ELSIF to_regclass('public.coordinator_state') IS NOT NULL THEN  -- before 0006
        LOCK TABLE public.coordinator_state IN EXCLUSIVE MODE;
    ELSE
        PERFORM pg_advisory_xact_lock(1785622639);
    END IF;
END;
$$;

-- set_search_path --
-- Where this transaction's unqualified names resolve and new objects land (migrations).
SELECT set_config('search_path', %(path)s, true);

-- set_class_key --
-- The class name the first migration gives this database's roles (`db migrate --class`).
SELECT set_config('ganpool.class_key', %(key)s, true);

-- adopt_objects --
-- After a migration: every object in the ganpool schema belongs to the class's owner role
-- (definer functions run as it, never as the migrating superuser), and no function or
-- table is open to PUBLIC.
DO $$
DECLARE
    v_owner name := (SELECT owner FROM ganpool.class_roles);
    v_owner_oid oid := (SELECT oid FROM pg_roles WHERE rolname = v_owner);
    v_obj text;
BEGIN
    FOR v_obj IN
        SELECT c.oid::regclass::text FROM pg_class AS c
        WHERE c.relnamespace = 'ganpool'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND c.relowner <> v_owner_oid
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', v_obj, v_owner);
    END LOOP;
    FOR v_obj IN
        SELECT c.oid::regclass::text FROM pg_class AS c
        WHERE c.relnamespace = 'ganpool'::regnamespace AND c.relkind = 'S'
          AND c.relowner <> v_owner_oid
          AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO %I', v_obj, v_owner);
    END LOOP;
    FOR v_obj IN
        SELECT p.oid::regprocedure::text FROM pg_proc AS p
        WHERE p.pronamespace = 'ganpool'::regnamespace AND p.proowner <> v_owner_oid
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', v_obj, v_owner);
    END LOOP;
    FOR v_obj IN
        SELECT t.oid::regtype::text FROM pg_type AS t
        WHERE t.typnamespace = 'ganpool'::regnamespace AND t.typtype IN ('c', 'd', 'e', 'r')
          AND t.typrelid = 0 AND t.typowner <> v_owner_oid
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %I', v_obj, v_owner);
    END LOOP;
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ganpool FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA ganpool FROM PUBLIC;
END;
$$;

-- secure_database --
-- Only the class's groups may connect to its database; no one may create in `public`
-- (PostgreSQL 14 and older let everyone) or make temporary objects. Run at every migrate,
-- so a copy of the database (CREATE DATABASE ... TEMPLATE, which resets these) is fixed.
DO $$
DECLARE
    c ganpool.class_roles%ROWTYPE;
BEGIN
    SELECT * INTO c FROM ganpool.class_roles;
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I', current_database(),
                   c.instructor, c.worker, c.viewer);
    BEGIN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EXCEPTION WHEN insufficient_privilege OR invalid_schema_name THEN
        RAISE WARNING 'could not revoke CREATE on schema public from PUBLIC (%): ask the '
                      'database superuser to', SQLERRM;
    END;
    -- PostgreSQL 16+: instructors may use the connections kept by reserved_connections.
    IF current_setting('server_version_num')::integer >= 160000 THEN
        BEGIN
            EXECUTE format('GRANT pg_use_reserved_connections TO %I', c.instructor);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'could not grant pg_use_reserved_connections to % (%)',
                c.instructor, SQLERRM;
        END;
    END IF;
END;
$$;

-- schema_present --
-- Where the migrations ledger is, if anywhere: in the ganpool schema, or in public (a
-- database not yet at 0006).
SELECT to_regclass('ganpool.schema_migrations') IS NOT NULL AS in_ganpool,
       to_regclass('public.schema_migrations') IS NOT NULL AS in_public;

-- applied_migrations --
-- Migrations already applied, in order (wherever the ledger is: see schema_present).
SELECT version FROM ganpool.schema_migrations ORDER BY version;

-- applied_migrations_in_public --
-- The same, for a database whose objects are still in public.
SELECT version FROM public.schema_migrations ORDER BY version;

-- migration_checksums --
-- What the ledger knows of each applied migration (after bootstrap.sql: the column exists).
SELECT version, name, checksum FROM schema_migrations ORDER BY version;

-- record_migration --
-- Note a migration as applied, with the sha256 of its file.
INSERT INTO schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- record_checksum --
-- The baseline: a migration applied before checksums were kept gets its file's now.
UPDATE schema_migrations SET checksum = %(checksum)s
WHERE version = %(version)s AND checksum IS NULL;

-- take_ownership --
-- Become the only coordinator of a run (what = 'coordinator:<run id>'), unless a live
-- session already is; previous_pid is this program's own earlier session, if any.
SELECT taken, holder_pid FROM ganpool_take_ownership(%(what)s, %(previous_pid)s);

-- listen_results --
-- The coordinator wakes when a result is submitted.
LISTEN ganpool_results;

-- listen_versions --
-- Workers wake when a version is published or the run's status changes.
LISTEN ganpool_version;

-- vacuum_blobs --
-- Make the space of deleted payloads and pruned weights reusable, so storage stays flat.
VACUUM (SKIP_LOCKED) result_payloads, version_weights, coordinator_state, samples;

-- set_grad_norm --
-- Record the gradient norms the coordinator measured on a result (whole, and per network).
UPDATE results SET grad_norm = %(grad_norm)s, norm_g = %(norm_g)s, norm_d = %(norm_d)s
WHERE id = %(result_id)s;

-- recent_norms --
-- Gradient norms measured on the most recent results of one phase (applied or refused),
-- for the norm check after a restart.
SELECT r.norm_g, r.norm_d FROM results AS r JOIN work_units AS u ON u.id = r.unit_id
WHERE r.run_id = %(run_id)s AND r.grad_norm IS NOT NULL AND u.phase = %(phase)s
ORDER BY r.id DESC LIMIT %(limit)s;

-- insert_g_units --
-- The alternating rule's G phase: one unit per D-phase unit applied in the step that
-- produced this version, with the same images (for the batch size) and the same noise.
-- Returns the new units (their noise seed picks the spot-checked ones).
INSERT INTO work_units (run_id, seq, version, epoch, indices, noise_seed, phase, phase_of)
SELECT u.run_id, NULL, %(version)s, u.epoch, u.indices, u.noise_seed, 'G', u.id
FROM version_contributions AS c JOIN work_units AS u ON u.id = c.unit_id
LEFT JOIN work_units AS b ON b.id = u.backup_of
WHERE c.run_id = %(run_id)s AND c.version = %(version)s AND u.phase = 'D'
  AND NOT EXISTS (SELECT 1 FROM work_units AS g
                  WHERE g.phase_of = u.id AND g.version = %(version)s)
ORDER BY coalesce(u.seq, b.seq)
RETURNING id, noise_seed;

-- verify_result --
-- A spot-check twin that agreed (or lost its pair): done, never applied itself.
WITH r AS (
    UPDATE results SET status = 'verified', decided_at = now()
    WHERE id = %(result_id)s AND status = 'submitted'
    RETURNING unit_id
)
UPDATE work_units SET state = 'applied' FROM r WHERE work_units.id = r.unit_id;

-- record_spot_check --
-- The outcome of comparing a unit's two results.
INSERT INTO spot_checks (run_id, unit_id, twin_id, worker_a, worker_b, cosine, rel_norm, agreed)
VALUES (%(run_id)s, %(unit_id)s, %(twin_id)s, %(worker_a)s, %(worker_b)s, %(cosine)s,
        %(rel_norm)s, %(agreed)s);

-- update_trust --
-- After a spot check: agreement restores a little trust, disagreement halves it.
UPDATE workers
SET trust = CASE WHEN %(agreed)s THEN least(1.0, trust + 0.05) ELSE trust * 0.5 END
WHERE id = %(worker_id)s;

-- disable_untrusted --
-- Disable a worker whose trust fell below the run's threshold after disagreeing with at
-- least two different peers (one peer alone cannot say who was wrong), and its student.
WITH locked AS (  -- FOR UPDATE: a worker call in flight finishes first, later ones see this
    -- SKIP LOCKED: a worker row a student keeps locked is not waited for; its results are
    -- held out anyway, and the next disagreement tries again.
    SELECT id FROM workers WHERE id = %(worker_id)s FOR UPDATE SKIP LOCKED
), w AS (
    UPDATE workers SET disabled = true
    WHERE id = (SELECT id FROM locked) AND trust < %(below)s AND NOT disabled
      AND (SELECT count(DISTINCT CASE WHEN s.worker_a = %(worker_id)s THEN s.worker_b
                                      ELSE s.worker_a END)
           FROM spot_checks AS s
           WHERE NOT s.agreed AND %(worker_id)s IN (s.worker_a, s.worker_b)) >= 2
    RETURNING id, role_name
), released AS (
    UPDATE work_units SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    FROM w WHERE work_units.worker_id = w.id AND work_units.state = 'claimed'
)
UPDATE students SET disabled = true, disabled_at = now()
FROM w WHERE students.role_name = w.role_name AND NOT students.disabled;

-- add_student --
-- Create a student's login role (from a SCRAM verifier) and their row.
SELECT ganpool_student_add(%(name)s, %(verifier)s) AS role_name;

-- disable_student --
-- Refuse a student from their next call on, and close their login.
SELECT ganpool_student_disable(%(name)s) AS role_name;

-- enable_student --
-- Let a disabled student back in.
SELECT ganpool_student_enable(%(name)s) AS role_name;

-- remove_student --
-- Drop a student's login (their past work stays on the leaderboard).
SELECT ganpool_student_remove(%(name)s) AS role_name;

-- end_student_sessions --
-- End a student's open connections and wait for them to go (a definer function: works
-- for a non-superuser instructor too).
SELECT ganpool_end_student_sessions(%(name)s) AS ended;

-- end_stalled_sessions --
-- End student sessions idle in a transaction, or in one statement, for too long (whatever
-- timeouts the student SET in their own session).
SELECT ganpool_end_stalled_sessions(%(idle_s)s, %(active_s)s) AS ended;

-- student_role --
-- The login role a student of this class gets.
SELECT ganpool_student_role(%(name)s) AS role_name;

-- viewer_role --
-- The login role a viewer of this class gets.
SELECT ganpool_viewer_role(%(name)s) AS role_name;

-- class_roles --
-- This database's class name and group roles.
SELECT key, owner, instructor, worker, viewer FROM class_roles;

-- list_students --
-- Students, whether they may work, their trust and when they were last seen.
SELECT s.name, s.role_name, s.disabled, s.created_at,
       coalesce(min(w.trust), 1.0) AS trust,
       max(w.last_heartbeat) AS last_seen,
       (SELECT count(*) FROM version_contributions AS c JOIN workers AS w2 ON w2.id = c.worker_id
        WHERE w2.role_name = s.role_name) AS units_applied
FROM students AS s LEFT JOIN workers AS w ON w.role_name = s.role_name
GROUP BY s.name, s.role_name, s.disabled, s.created_at
ORDER BY s.name;

-- whoami --
-- The caller's student name ('' for the instructor or another non-student login).
SELECT ganpool_whoami() AS name;

-- my_standing --
-- A worker's place on its run's leaderboard.
SELECT place, of_workers, images FROM ganpool_my_standing(%(worker_id)s);

-- list_runs --
-- Every run, newest first (the dashboard's run picker, `ganpool run list`).
SELECT id, name, status, current_version, config, images_applied, created_at, started_at,
       finished_at
FROM runs ORDER BY id DESC;

-- dashboard_progress --
-- The run's key figures: version, epochs, workers online, targets.
SELECT r.id, r.name, r.status, r.current_version, r.images_applied,
       r.dataset_size, r.config, r.started_at, r.finished_at,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at) AS running_s,
       (SELECT coalesce(sum(images_applied::float8 / size), 0) FROM epochs
        WHERE run_id = r.id) AS epochs,
       (SELECT count(*) FROM workers
        WHERE run_id = r.id AND left_at IS NULL
          AND last_heartbeat > now() - make_interval(secs => (r.config ->> 'lease_s')::float8))
           AS workers_online
FROM runs AS r WHERE r.name = %(run)s;

-- dashboard_leaderboard --
-- Per student (worker name): accepted images and units, rejections, share of updates, online.
WITH accepted AS (  -- images count once (a G-phase unit reuses its D phase's)
    SELECT w.name, coalesce(sum(c.samples) FILTER (WHERE u.phase <> 'G'), 0) AS images,
           count(*) AS units
    FROM version_contributions AS c JOIN workers AS w ON w.id = c.worker_id
    JOIN work_units AS u ON u.id = c.unit_id
    WHERE c.run_id = %(run_id)s GROUP BY w.name
), refused AS (
    SELECT w.name, count(*) AS rejected,
           (array_agg(j.reason ORDER BY j.id DESC))[1:3] AS reasons
    FROM rejections AS j JOIN workers AS w ON w.id = j.worker_id
    WHERE j.run_id = %(run_id)s GROUP BY w.name
), presence AS (
    SELECT name, bool_or(left_at IS NULL AND last_heartbeat > now() - interval '30 seconds')
               AS online,
           min(trust) AS trust
    FROM workers WHERE run_id = %(run_id)s GROUP BY name
), total AS (
    SELECT greatest(count(*), 1) AS units FROM version_contributions WHERE run_id = %(run_id)s
)
SELECT p.name, coalesce(a.images, 0) AS images, coalesce(a.units, 0) AS units,
       coalesce(f.rejected, 0) AS rejected, coalesce(f.reasons, '{}') AS reasons,
       coalesce(a.units, 0)::float8 / (SELECT units FROM total) AS share,
       p.online, p.trust
FROM presence AS p
LEFT JOIN accepted AS a ON a.name = p.name
LEFT JOIN refused AS f ON f.name = p.name
ORDER BY images DESC, p.name
LIMIT %(limit)s;

-- dashboard_metrics --
-- Loss curves by the paper's step (see recent_metrics), averaged into at most max_points
-- buckets of consecutive steps.
WITH steps AS (
    SELECT ganpool_version_to_step(version, %(per_step)s::int, true) AS step,
           avg(g_loss) AS g_loss, avg(d_loss) AS d_loss, avg(d_real) AS d_real,
           avg(d_fake) AS d_fake
    FROM step_metrics WHERE run_id = %(run_id)s
    GROUP BY 1 HAVING count(*) = %(per_step)s::int
), bucket AS MATERIALIZED (  -- computed once (not once per step, as a plan may choose)
    SELECT greatest(1, ceil(count(*)::float8 / %(per_step)s::int / %(max_points)s))::int
               AS width
    FROM step_metrics WHERE run_id = %(run_id)s
)
SELECT max(step) AS step, avg(g_loss) AS g_loss, avg(d_loss) AS d_loss,
       avg(d_real) AS d_real, avg(d_fake) AS d_fake
FROM steps, bucket
GROUP BY (step - 1) / bucket.width
ORDER BY 1;

-- dashboard_sample_steps --
-- Steps that have a stored sample grid. A grid drawn mid-step (a run that ended after a D
-- phase) shows the generator of the step before: only a G phase changes it.
SELECT DISTINCT ganpool_version_to_step(version, %(per_step)s::int) AS step FROM samples
WHERE run_id = %(run_id)s ORDER BY 1;

-- dashboard_sample --
-- The sample grid of one step (read with a binary cursor).
SELECT png FROM samples
WHERE run_id = %(run_id)s AND ganpool_version_to_step(version, %(per_step)s::int) = %(step)s
ORDER BY version DESC LIMIT 1;

-- dashboard_workers --
-- Workers of the run: device, last heartbeat, current unit, recent images per second.
SELECT w.id, w.name, w.device, w.hostname, w.last_heartbeat, w.left_at IS NULL AS present,
       extract(epoch FROM now() - w.last_heartbeat) AS seconds_since_heartbeat,
       (SELECT u.id FROM work_units AS u WHERE u.worker_id = w.id AND u.state = 'claimed'
        LIMIT 1) AS current_unit,
       (SELECT coalesce(sum(r.samples), 0)
        FROM results AS r JOIN work_units AS u ON u.id = r.unit_id
        WHERE r.worker_id = w.id AND r.submitted_at > now() - interval '60 seconds'
          AND u.phase <> 'G' AND u.twin_of IS NULL) AS images_last_minute,
       least(60, extract(epoch FROM now() - w.registered_at)) AS seconds
FROM workers AS w
WHERE w.run_id = %(run_id)s AND (w.left_at IS NULL OR w.left_at > now() - interval '10 minutes')
ORDER BY w.last_heartbeat DESC
LIMIT %(limit)s;

-- insert_quality --
-- Store a version's KID and FID.
INSERT INTO quality (run_id, version, kid, kid_std, fid, n_real, n_fake)
VALUES (%(run_id)s, %(version)s, %(kid)s, %(kid_std)s, %(fid)s, %(n_real)s, %(n_fake)s)
ON CONFLICT (run_id, version) DO UPDATE
SET kid = excluded.kid, kid_std = excluded.kid_std, fid = excluded.fid,
    n_real = excluded.n_real, n_fake = excluded.n_fake;

-- dashboard_quality --
-- The quality metric over the run, for the learning-curve chart.
SELECT ganpool_version_to_step(version, %(per_step)s::int) AS step, kid, kid_std, fid, n_fake FROM quality
WHERE run_id = %(run_id)s ORDER BY version;

-- begin_dataset --
-- Start (or restart) loading a dataset: its row, with no images yet.
INSERT INTO datasets (fingerprint, kind, size, image_size, channels)
VALUES (%(fingerprint)s, %(kind)s, %(size)s, %(image_size)s, %(channels)s)
ON CONFLICT (fingerprint) DO UPDATE SET loaded_at = NULL;

-- clear_dataset_images --
-- Drop a partial load before loading again.
DELETE FROM dataset_images WHERE fingerprint = %(fingerprint)s;

-- copy_dataset_images --
-- Bulk load of encoded images (COPY, binary format).
COPY dataset_images (fingerprint, idx, image) FROM STDIN (FORMAT BINARY);

-- finish_dataset --
-- Mark a load complete once every image is in.
UPDATE datasets
SET loaded_at = now(),
    bytes = (SELECT coalesce(sum(octet_length(image)), 0) FROM dataset_images
             WHERE fingerprint = %(fingerprint)s)
WHERE fingerprint = %(fingerprint)s
  AND size = (SELECT count(*) FROM dataset_images WHERE fingerprint = %(fingerprint)s)
RETURNING size, bytes;

-- dataset_by_fingerprint --
-- A loaded dataset's description, if it is complete.
SELECT fingerprint, kind, size, image_size, channels, bytes, loaded_at
FROM datasets WHERE fingerprint = %(fingerprint)s AND loaded_at IS NOT NULL;

-- dataset_images --
-- The encoded images at some positions (read with a binary cursor).
SELECT idx, image FROM dataset_images
WHERE fingerprint = %(fingerprint)s AND idx = ANY(%(indices)s);

-- reissue_student --
-- Give a student's login a new password (the old join string stops working).
SELECT ganpool_student_reissue(%(name)s, %(verifier)s) AS role_name;

-- add_viewer --
-- Create a read-only login (in the class's viewer group) for a projector or an assistant.
SELECT ganpool_viewer_add(%(name)s, %(verifier)s) AS role_name;

-- remove_viewer --
-- Drop a read-only login made by add_viewer.
SELECT ganpool_viewer_remove(%(name)s) AS role_name;

-- can_read_dashboard --
-- Whether this login may read what the dashboard shows (a student's login may not).
SELECT has_table_privilege('runs', 'SELECT') AND has_table_privilege('workers', 'SELECT')
       AND has_table_privilege('step_metrics', 'SELECT')
       AND has_table_privilege('samples', 'SELECT') AS readable;
-- set_tick_lock_timeout --
-- Nothing the coordinator does waits long on a lock a student may hold: a tick that would
-- is rolled back and tried again on the next one.
SET LOCAL lock_timeout = '1s';

-- recent_unit_seconds --
-- How long the run's recent units took from claim to submission (server clock), median.
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS seconds, count(*) AS n FROM (
    SELECT extract(epoch FROM x.submitted_at - u.claimed_at) AS s
    FROM results AS x JOIN work_units AS u ON u.id = x.unit_id
    WHERE x.run_id = %(run_id)s AND u.worker_id = x.worker_id
    ORDER BY x.id DESC LIMIT 32
) AS recent;

-- issue_backups --
-- Backup copies (MapReduce's backup tasks): a unit of this version held longer than
-- `after_s` with no result yet gets a pending copy for an idle worker of another student,
-- at most one pending copy at a time and `max_copies` copies in all. Twins are not copied:
-- the step stops waiting for them instead.
INSERT INTO work_units (run_id, seq, version, epoch, indices, noise_seed, phase, phase_of,
                        backup_of)
SELECT f.run_id, NULL, f.version, f.epoch, f.indices, f.noise_seed, f.phase, f.phase_of, f.id
FROM work_units AS f
WHERE f.run_id = %(run_id)s AND f.version = %(version)s AND f.backup_of IS NULL
  AND f.twin_of IS NULL
  AND EXISTS (SELECT 1 FROM work_units AS m
              WHERE (m.id = f.id OR m.backup_of = f.id) AND m.state = 'claimed'
                AND m.claimed_at < now() - make_interval(secs => %(after_s)s))
  AND NOT EXISTS (SELECT 1 FROM work_units AS m
                  WHERE (m.id = f.id OR m.backup_of = f.id)
                    AND (m.state IN ('pending', 'submitted', 'applied', 'quarantined')
                         OR (m.state = 'claimed'
                             AND m.claimed_at >= now() - make_interval(secs => %(after_s)s))))
  AND (SELECT count(*) FROM work_units AS m WHERE m.backup_of = f.id) < %(max_copies)s
ORDER BY f.seq, f.id
RETURNING backup_of;

-- reissue_refused --
-- A unit of this version whose every copy was refused goes out again, to another student
-- (the claim rule skips whoever already worked on it), up to `max_copies` copies: a refused
-- G-phase unit included, so the alternating rule never waits on a refusal for good.
INSERT INTO work_units (run_id, seq, version, epoch, indices, noise_seed, phase, phase_of,
                        backup_of)
SELECT f.run_id, NULL, f.version, f.epoch, f.indices, f.noise_seed, f.phase, f.phase_of, f.id
FROM work_units AS f
WHERE f.run_id = %(run_id)s AND f.version = %(version)s AND f.backup_of IS NULL
  AND f.twin_of IS NULL AND NOT f.images_returned
  AND EXISTS (SELECT 1 FROM work_units AS m
              WHERE (m.id = f.id OR m.backup_of = f.id) AND m.state = 'rejected')
  AND NOT EXISTS (SELECT 1 FROM work_units AS m
                  WHERE (m.id = f.id OR m.backup_of = f.id)
                    AND m.state IN ('pending', 'claimed', 'submitted', 'applied', 'quarantined'))
  AND (SELECT count(*) FROM work_units AS m WHERE m.backup_of = f.id) < %(max_copies)s
ORDER BY f.seq, f.id
RETURNING backup_of;

-- give_back_unapplied --
-- Images of units (before `version`) that are out of play with no copy applied go back to
-- their epoch, once per unit and its copies. G-phase units and twins hold no images of
-- their own. A unit a student holds locked is left for a later tick.
WITH done AS (
    SELECT f.id, f.epoch, f.indices, f.seq FROM work_units AS f
    WHERE f.run_id = %(run_id)s AND f.version < %(version)s AND f.backup_of IS NULL
      AND f.twin_of IS NULL AND f.phase <> 'G' AND NOT f.images_returned
      AND f.state IN ('rejected', 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM work_units AS m
                      WHERE m.backup_of = f.id
                        AND m.state IN ('pending', 'claimed', 'submitted', 'applied',
                                        'quarantined'))
    FOR UPDATE OF f SKIP LOCKED
), marked AS (
    UPDATE work_units SET images_returned = true FROM done WHERE work_units.id = done.id
), images AS (
    SELECT d.epoch, array_agg(i ORDER BY d.seq, k) AS indices
    FROM done AS d CROSS JOIN LATERAL unnest(d.indices) WITH ORDINALITY AS x (i, k)
    GROUP BY d.epoch
)
UPDATE epochs AS e SET returned = e.returned || images.indices
FROM images WHERE e.run_id = %(run_id)s AND e.epoch = images.epoch;

-- supersede_result --
-- A valid result of a unit whose copy's result was applied first: dropped, not refused.
WITH r AS (
    UPDATE results SET status = 'superseded', decided_at = now()
    WHERE id = %(result_id)s AND status = 'submitted'
    RETURNING unit_id
)
UPDATE work_units SET state = 'cancelled' FROM r WHERE work_units.id = r.unit_id;

-- quarantine_units --
-- Units that `after` different students (or workers) reported they cannot compute, and that
-- no copy has computed: set aside with the reasons given, for the instructor to see. Returns
-- the first unit of each with the images reported bad.
WITH failing AS (
    SELECT family_id, array_agg(DISTINCT image_index) FILTER (WHERE image_index IS NOT NULL)
               AS bad,
           string_agg(DISTINCT reason, '; ') AS reasons
    FROM unit_failures WHERE run_id = %(run_id)s
    GROUP BY family_id HAVING count(DISTINCT who) >= %(after)s
), set_aside AS (
    UPDATE work_units AS u
    SET state = 'quarantined', worker_id = NULL, lease_expires_at = NULL,
        quarantine_reason = failing.reasons
    FROM failing
    WHERE coalesce(u.backup_of, u.id) = failing.family_id AND u.state IN ('pending', 'claimed')
      AND NOT EXISTS (SELECT 1 FROM work_units AS m
                      WHERE coalesce(m.backup_of, m.id) = failing.family_id
                        AND m.state IN ('submitted', 'applied'))
      AND u.id IN (SELECT id FROM work_units WHERE run_id = %(run_id)s
                   AND state IN ('pending', 'claimed') FOR UPDATE SKIP LOCKED)
    RETURNING coalesce(u.backup_of, u.id) AS family_id
)
SELECT f.id, f.epoch, f.indices, f.phase, f.twin_of, f.images_returned,
       coalesce(failing.bad, '{}') AS bad
FROM work_units AS f JOIN failing ON failing.family_id = f.id
WHERE f.id IN (SELECT family_id FROM set_aside);

-- mark_images_returned --
-- A unit's images have been accounted for (given back or quarantined).
UPDATE work_units SET images_returned = true WHERE id = %(unit_id)s;

-- quarantine_images --
-- Count images set aside in an epoch as done, and close the epoch when all are in.
UPDATE epochs
SET images_quarantined = images_quarantined + %(images)s,
    completed_at = CASE WHEN images_applied + images_quarantined + %(images)s = size
                        THEN now() END
WHERE run_id = %(run_id)s AND epoch = %(epoch)s;

-- quarantined_units --
-- Units set aside because workers could not compute them, with the reasons they gave.
SELECT u.id, u.version, u.epoch, u.indices, u.quarantine_reason AS reason,
       (SELECT array_agg(DISTINCT f.image_index) FILTER (WHERE f.image_index IS NOT NULL)
        FROM unit_failures AS f WHERE f.family_id = u.id) AS bad_images,
       (SELECT count(DISTINCT f.who) FROM unit_failures AS f WHERE f.family_id = u.id)
           AS reported_by
FROM work_units AS u
WHERE u.run_id = %(run_id)s AND u.state = 'quarantined' AND u.backup_of IS NULL
ORDER BY u.id DESC LIMIT %(limit)s;

-- report_failure --
-- Tell the run this worker cannot compute a unit it holds (an image that does not decode).
SELECT ganpool_report_failure(%(worker_id)s, %(unit_id)s, %(attempt)s, %(image_index)s,
                              %(reason)s) AS reported;

-- abandon_unclaimed_copies --
-- Copies of this version nobody could claim for `after_s` (every other student busy or
-- excluded) are dropped; a refused unit then goes back to its epoch once its copies run out.
UPDATE work_units SET state = 'cancelled'
WHERE id IN (SELECT id FROM work_units
             WHERE run_id = %(run_id)s AND version = %(version)s AND backup_of IS NOT NULL
               AND state = 'pending' AND attempt = 0
               AND created_at < now() - make_interval(secs => %(after_s)s)
             FOR UPDATE SKIP LOCKED)
RETURNING id;

-- quarantined_images --
-- Images named bad by the workers of a quarantined unit: never handed out again.
SELECT DISTINCT f.image_index AS idx
FROM unit_failures AS f JOIN work_units AS u ON u.id = f.family_id
WHERE f.run_id = %(run_id)s AND u.state = 'quarantined' AND f.image_index IS NOT NULL;

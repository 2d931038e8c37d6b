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
-- Lock the run's row for the length of a coordinator transaction.
SELECT id, status, current_version, units_issued, images_applied,
       extract(epoch FROM now() - version_started_at) AS version_age_s,
       extract(epoch FROM now() - started_at) AS running_s
FROM runs WHERE id = %(run_id)s FOR UPDATE;

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
-- Count images applied within an epoch, and close it when all are in.
UPDATE epochs
SET images_applied = images_applied + %(images)s,
    completed_at = CASE WHEN images_applied + %(images)s = size THEN now() END
WHERE run_id = %(run_id)s AND epoch = %(epoch)s;

-- epochs_completed --
-- Fractional epochs: whole epochs completed plus the share of the open one.
SELECT coalesce(sum(images_applied::double precision / size), 0) AS epochs
FROM epochs WHERE run_id = %(run_id)s;

-- insert_unit --
-- Issue one work unit for a version.
INSERT INTO work_units (run_id, seq, version, epoch, indices, noise_seed)
VALUES (%(run_id)s, %(seq)s, %(version)s, %(epoch)s, %(indices)s, %(noise_seed)s);

-- set_units_issued --
-- Advance the run's unit counter (the next unit's seq).
UPDATE runs SET units_issued = %(units_issued)s WHERE id = %(run_id)s;

-- count_live_units --
-- Units of a version still pending, claimed or submitted.
SELECT count(*) AS n FROM work_units
WHERE run_id = %(run_id)s AND version = %(version)s
  AND state IN ('pending', 'claimed', 'submitted');

-- expire_leases --
-- Put units whose lease ran out (on the server's clock) back in the queue.
UPDATE work_units
SET state = 'pending', worker_id = NULL, lease_expires_at = NULL, reissued = reissued + 1
WHERE run_id = %(run_id)s AND state = 'claimed' AND lease_expires_at < now()
RETURNING id;

-- waiting_results --
-- Results submitted for a version and not yet decided, in unit order, locked.
SELECT r.id, r.unit_id, r.worker_id, r.samples, r.g_loss, r.d_loss, r.d_real, r.d_fake,
       u.epoch, u.indices
FROM results AS r
JOIN work_units AS u ON u.id = r.unit_id
WHERE r.run_id = %(run_id)s AND r.version = %(version)s AND r.status = 'submitted'
ORDER BY u.seq
FOR UPDATE OF r, u;

-- count_waiting_results --
-- How many results for a version are waiting to be applied.
SELECT count(*) AS n FROM results
WHERE run_id = %(run_id)s AND version = %(version)s AND status = 'submitted';

-- result_payload --
-- One result's tensor payload (read with a binary cursor).
SELECT payload FROM result_payloads WHERE result_id = %(result_id)s;

-- apply_result --
-- Mark a result and its unit applied, and record what it contributed to which version.
WITH r AS (
    UPDATE results SET status = 'applied', decided_at = now()
    WHERE id = %(result_id)s AND status = 'submitted'
    RETURNING id, unit_id, worker_id, samples
), u AS (
    UPDATE work_units SET state = 'applied' FROM r WHERE work_units.id = r.unit_id
)
INSERT INTO version_contributions (run_id, version, unit_id, result_id, worker_id, samples, weight)
SELECT %(run_id)s, %(version)s, r.unit_id, r.id, r.worker_id, r.samples, %(weight)s FROM r;

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

-- delete_payload --
-- Drop a decided result's tensors: applied or rejected, they are never read again.
DELETE FROM result_payloads WHERE result_id = %(result_id)s;

-- cancel_stale_units --
-- Cancel the units of older versions that no result came back for; returns their images.
UPDATE work_units
SET state = 'cancelled', lease_expires_at = NULL
WHERE run_id = %(run_id)s AND version < %(version)s AND state IN ('pending', 'claimed')
RETURNING id, epoch, indices;

-- stale_results --
-- Results of older versions still waiting: they lost the race to form their step.
SELECT r.id, r.worker_id, u.epoch, u.indices, r.version
FROM results AS r JOIN work_units AS u ON u.id = r.unit_id
WHERE r.run_id = %(run_id)s AND r.version < %(version)s AND r.status = 'submitted'
FOR UPDATE OF r;

-- insert_version --
-- Record a published version.
INSERT INTO versions (run_id, version, images, epoch, is_milestone)
VALUES (%(run_id)s, %(version)s, %(images)s, %(epoch)s, %(is_milestone)s);

-- insert_weights --
-- Store a version's weights (safetensors, bound as binary).
INSERT INTO version_weights (run_id, version, weights)
VALUES (%(run_id)s, %(version)s, %(weights)s);

-- save_coordinator_state --
-- Keep the optimiser state of the newest version, for a coordinator restart.
INSERT INTO coordinator_state (run_id, version, optimizer)
VALUES (%(run_id)s, %(version)s, %(optimizer)s)
ON CONFLICT (run_id) DO UPDATE SET version = excluded.version, optimizer = excluded.optimizer;

-- coordinator_state --
-- The optimiser state saved with the newest version.
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
-- One step's losses and contributors.
INSERT INTO step_metrics (run_id, step, g_loss, d_loss, d_real, d_fake, workers, units, images,
                          epoch)
VALUES (%(run_id)s, %(step)s, %(g_loss)s, %(d_loss)s, %(d_real)s, %(d_fake)s, %(workers)s,
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
SELECT unit_id, version, indices, noise_seed, attempt FROM ganpool_claim(%(worker_id)s);

-- submit_result --
-- Upload a result and complete its unit in one transaction.
SELECT accepted, reason
FROM ganpool_submit(%(worker_id)s, %(unit_id)s, %(attempt)s, %(payload)s, %(g_loss)s,
                    %(d_loss)s, %(d_real)s, %(d_fake)s, %(compute_seconds)s);

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
       (SELECT count(*) FROM workers
        WHERE run_id = r.id AND left_at IS NULL
          AND last_heartbeat > now() - make_interval(secs => (r.config ->> 'lease_s')::float8))
           AS workers_online,
       (SELECT coalesce(sum(images_applied::double precision / size), 0)
        FROM epochs WHERE run_id = r.id) AS epochs
FROM runs AS r WHERE r.id = %(run_id)s;

-- leaderboard --
-- Accepted images and units per worker name, and their rejections.
SELECT w.name,
       coalesce(sum(c.samples), 0) AS images,
       count(c.unit_id) AS units,
       (SELECT count(*) FROM rejections AS j JOIN workers AS w2 ON w2.id = j.worker_id
        WHERE w2.run_id = %(run_id)s AND w2.name = w.name) AS rejected
FROM workers AS w
LEFT JOIN version_contributions AS c ON c.worker_id = w.id
WHERE w.run_id = %(run_id)s
GROUP BY w.name
ORDER BY images DESC, w.name;

-- recent_metrics --
-- The last few steps' metrics, newest last.
SELECT step, g_loss, d_loss, d_real, d_fake, workers, images, epoch FROM (
    SELECT * FROM step_metrics WHERE run_id = %(run_id)s ORDER BY step DESC LIMIT %(limit)s
) AS m ORDER BY step;

-- lock_migrations --
-- One migrator at a time (released at commit).
SELECT pg_advisory_xact_lock(1785622639);

-- schema_present --
-- Whether the migrations ledger exists yet.
SELECT to_regclass('schema_migrations') IS NOT NULL AS present;

-- applied_migrations --
-- Migrations already applied, in order.
SELECT version FROM schema_migrations ORDER BY version;

-- record_migration --
-- Note a migration as applied.
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- try_coordinator_lock --
-- Become the run's only coordinator for the life of this session, or learn someone else is.
SELECT pg_try_advisory_lock(%(cls)s, %(run_id)s::integer) AS locked;

-- listen_results --
-- The coordinator wakes when a result is submitted.
LISTEN ganpool_results;

-- listen_versions --
-- Workers wake when a version is published or the run's status changes.
LISTEN ganpool_version;

-- vacuum_blobs --
-- Make the space of deleted payloads and pruned weights reusable, so storage stays flat.
VACUUM (SKIP_LOCKED) result_payloads, version_weights, coordinator_state, samples;

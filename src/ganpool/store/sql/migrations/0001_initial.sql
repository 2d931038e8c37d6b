-- ganpool's core schema: runs, workers, the work-unit queue, results, published versions.
-- Tensor blobs live in tables of their own (result_payloads, version_weights,
-- coordinator_state, samples) so that polling and claiming never read or lock them.

CREATE TABLE runs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    config              jsonb NOT NULL,
    dataset_fingerprint text NOT NULL,
    dataset_size        integer NOT NULL CHECK (dataset_size > 0),
    status              text NOT NULL DEFAULT 'created'
                        CHECK (status IN ('created', 'running', 'paused', 'finished', 'stopped')),
    current_version     integer NOT NULL DEFAULT -1,   -- -1 until version 0 is published
    units_issued        bigint NOT NULL DEFAULT 0,     -- next unit's seq; seeds derive from it
    images_applied      bigint NOT NULL DEFAULT 0,
    version_started_at  timestamptz,                   -- the step deadline counts from here
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);

CREATE TABLE workers (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    hostname        text NOT NULL DEFAULT '',
    device          text NOT NULL DEFAULT 'cpu',
    registered_at   timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    left_at         timestamptz
);
CREATE INDEX workers_run ON workers (run_id);

-- One row per epoch: images before `cursor` in the epoch's permutation have been handed
-- out; `returned` holds images given back by cancelled, expired or rejected units.
CREATE TABLE epochs (
    run_id          bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch           integer NOT NULL CHECK (epoch >= 0),
    seed            bigint NOT NULL,
    size            integer NOT NULL,
    cursor          integer NOT NULL DEFAULT 0,
    returned        integer[] NOT NULL DEFAULT '{}',
    images_applied  integer NOT NULL DEFAULT 0,
    completed_at    timestamptz,
    PRIMARY KEY (run_id, epoch),
    CHECK (images_applied <= size)
);

CREATE TABLE work_units (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq               bigint,             -- issue order; NULL for a spot-check twin
    version           integer NOT NULL,   -- the weights this unit must be computed on
    epoch             integer NOT NULL,
    indices           integer[] NOT NULL CHECK (cardinality(indices) > 0),
    noise_seed        bigint NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'claimed', 'submitted', 'applied',
                                       'rejected', 'cancelled')),
    worker_id         bigint REFERENCES workers (id),
    attempt           integer NOT NULL DEFAULT 0,   -- bumped by every claim
    reissued          integer NOT NULL DEFAULT 0,   -- leases that expired on this unit
    twin_of           bigint REFERENCES work_units (id),  -- a spot check: same work, other worker
    phase             text NOT NULL DEFAULT 'both' CHECK (phase IN ('both', 'D', 'G')),
    phase_of          bigint REFERENCES work_units (id),  -- a G-phase unit: its D-phase unit
    claimed_at        timestamptz,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, seq),
    CHECK ((seq IS NULL) = (twin_of IS NOT NULL OR phase_of IS NOT NULL)),
    FOREIGN KEY (run_id, epoch) REFERENCES epochs (run_id, epoch)
);
-- Claiming and lease sweeps only ever look at the few live units: keep those lookups flat.
CREATE INDEX work_units_pending ON work_units (run_id, seq) WHERE state = 'pending';
CREATE INDEX work_units_claimed ON work_units (run_id, lease_expires_at) WHERE state = 'claimed';
CREATE INDEX work_units_live ON work_units (run_id, version)
    WHERE state IN ('pending', 'claimed', 'submitted');

-- One accepted submission per unit, at most: the UNIQUE on unit_id is the database's promise.
CREATE TABLE results (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    unit_id          bigint NOT NULL UNIQUE REFERENCES work_units (id) ON DELETE CASCADE,
    worker_id        bigint NOT NULL REFERENCES workers (id),
    version          integer NOT NULL,
    samples          integer NOT NULL CHECK (samples > 0),  -- from the unit, never the worker
    g_loss           real,
    d_loss           real,
    d_real           real,
    d_fake           real,
    compute_seconds  real,
    grad_norm        real,   -- measured by the coordinator when it validates the payload
    status           text NOT NULL DEFAULT 'submitted'
                     CHECK (status IN ('submitted', 'applied', 'verified', 'rejected')),
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    decided_at       timestamptz
);
CREATE INDEX results_waiting ON results (run_id, version) WHERE status = 'submitted';

CREATE TABLE result_payloads (
    result_id  bigint PRIMARY KEY REFERENCES results (id) ON DELETE CASCADE,
    payload    bytea NOT NULL
);
-- Gradients do not compress: skip pglz and store them out of line directly.
ALTER TABLE result_payloads ALTER COLUMN payload SET STORAGE EXTERNAL;

-- Everything a student is told "no" about, with the reason, for `ganpool worker` to show.
CREATE TABLE rejections (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    worker_id   bigint NOT NULL REFERENCES workers (id),
    unit_id     bigint REFERENCES work_units (id) ON DELETE CASCADE,
    version     integer,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejections_worker ON rejections (worker_id, id);

-- Spot checks: a unit computed by two different workers, and whether they agreed.
CREATE TABLE spot_checks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    unit_id     bigint NOT NULL REFERENCES work_units (id) ON DELETE CASCADE,
    twin_id     bigint NOT NULL REFERENCES work_units (id) ON DELETE CASCADE,
    worker_a    bigint NOT NULL REFERENCES workers (id),
    worker_b    bigint NOT NULL REFERENCES workers (id),
    cosine      double precision NOT NULL,
    rel_norm    double precision NOT NULL,   -- |norm_a - norm_b| / max(norm_a, norm_b)
    agreed      boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    run_id        bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    version       integer NOT NULL CHECK (version >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    images        integer NOT NULL DEFAULT 0,
    epoch         double precision NOT NULL DEFAULT 0,   -- epochs completed, fractional
    is_milestone  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, version)
);

CREATE TABLE version_weights (
    run_id   bigint NOT NULL,
    version  integer NOT NULL,
    weights  bytea NOT NULL,
    PRIMARY KEY (run_id, version),
    FOREIGN KEY (run_id, version) REFERENCES versions (run_id, version) ON DELETE CASCADE
);
ALTER TABLE version_weights ALTER COLUMN weights SET STORAGE EXTERNAL;

-- Which results formed each version: any version can be explained and replayed.
-- UNIQUE (unit_id) means a unit's result is applied at most once, whatever the code does.
CREATE TABLE version_contributions (
    run_id     bigint NOT NULL,
    version    integer NOT NULL,   -- the version this result helped produce
    unit_id    bigint NOT NULL UNIQUE REFERENCES work_units (id) ON DELETE CASCADE,
    result_id  bigint NOT NULL UNIQUE REFERENCES results (id) ON DELETE CASCADE,
    worker_id  bigint NOT NULL REFERENCES workers (id),
    samples    integer NOT NULL,
    weight     double precision NOT NULL,
    FOREIGN KEY (run_id, version) REFERENCES versions (run_id, version) ON DELETE CASCADE
);
CREATE INDEX version_contributions_version ON version_contributions (run_id, version);

-- The coordinator's resumable state: Adam moments for the newest version only.
CREATE TABLE coordinator_state (
    run_id     bigint PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    version    integer NOT NULL,
    optimizer  bytea NOT NULL
);

CREATE TABLE step_metrics (
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step        integer NOT NULL,   -- the version this step produced
    g_loss      real,
    d_loss      real,
    d_real      real,
    d_fake      real,
    workers     integer NOT NULL,
    units       integer NOT NULL,
    images      integer NOT NULL,
    epoch       double precision NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step)
);

CREATE TABLE samples (
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    png         bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, version)
);

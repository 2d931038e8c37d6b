-- Generator quality measured during a run (KID and FID against the run's dataset).
CREATE TABLE quality (
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    kid         double precision NOT NULL,
    kid_std     double precision NOT NULL,
    fid         double precision NOT NULL,
    n_real      integer NOT NULL,
    n_fake      integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, version)
);
GRANT SELECT ON quality TO ganpool_viewer;
GRANT ALL ON quality TO ganpool_instructor;

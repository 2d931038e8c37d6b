-- A dataset loaded once into the database (`ganpool data load`), so that a student needs
-- nothing but a join string: workers fetch just the images of the units they claim.
-- Images are stored encoded, as they were on disk (JPEG, PNG ...), keyed by position.
CREATE TABLE datasets (
    fingerprint  text PRIMARY KEY,
    kind         text NOT NULL,
    size         integer NOT NULL CHECK (size > 0),
    image_size   integer NOT NULL,
    channels     integer NOT NULL,
    bytes        bigint NOT NULL DEFAULT 0,
    loaded_at    timestamptz
);

CREATE TABLE dataset_images (
    fingerprint  text NOT NULL REFERENCES datasets (fingerprint) ON DELETE CASCADE,
    idx          integer NOT NULL CHECK (idx >= 0),
    image        bytea NOT NULL,
    PRIMARY KEY (fingerprint, idx)
);
-- Already-compressed images: don't try pglz on them.
ALTER TABLE dataset_images ALTER COLUMN image SET STORAGE EXTERNAL;

GRANT SELECT ON datasets, dataset_images TO ganpool_worker, ganpool_viewer;
GRANT ALL ON datasets, dataset_images TO ganpool_instructor;

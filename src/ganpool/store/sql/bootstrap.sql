-- The migrations ledger, created before any migration runs. `checksum` is the sha256 of the
-- migration's file as it was applied (or, for a migration applied before checksums were
-- kept, as it was when they first were): `migrate` refuses a file that has changed since.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    checksum    text
);
-- A ledger made before checksums were kept gains the column. Checked first, so that an
-- up-to-date database is not altered (nor its owner's privilege needed) at every migrate.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'schema_migrations'::regclass AND attname = 'checksum'
                     AND NOT attisdropped) THEN
        ALTER TABLE schema_migrations ADD COLUMN checksum text;
    END IF;
END;
$$;

-- Named leases with fencing tokens (ADR 0015): the outbox relay's lease becomes one row of
-- `herald_leases` (`herald:outbox-relay`), beside one per projection and saga timeout scan.
-- `token` grows every time a lease changes hands; a release only ends the lease
-- (`expires_at` in the past), so the row and its token stay. `expires_at` is in unix
-- milliseconds of SQLite's clock. (Version 6 is PostgreSQL's sequenced log: SQLite has none.)
ALTER TABLE herald_outbox_lease RENAME TO herald_leases;
ALTER TABLE herald_leases ADD COLUMN token INTEGER NOT NULL DEFAULT 1;
UPDATE herald_leases SET name = 'herald:outbox-relay' WHERE name = 'relay';

-- The fencing token of the lease under which a checkpoint was last saved (0: none): a
-- conditional save with an older token is refused.
ALTER TABLE herald_checkpoints ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
